#!/usr/bin/env python3
"""Per-kernel time of the last engine step in an Nsight Compute CSV (deploy/bench/gpu_profile_decode.sh).

Steps start at the embedding kernel; kernels are grouped by name (templates and arguments cut) and
printed with their count, total microseconds and share of the step.
usage: ncu_step_summary.py ncu_b64.csv [--step -1]
"""
import csv
import re
import sys
from collections import OrderedDict


def short(name):
    name = name.replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\(.*", "", name)          # arguments
    name = re.sub(r"<.*", "", name)           # template arguments
    name = name.split("::")[-1]
    return name.strip() or "?"


def main():
    path = sys.argv[1]
    step = int(sys.argv[sys.argv.index("--step") + 1]) if "--step" in sys.argv else -1
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        us = value / 1000.0 if unit in ("ns", "nsecond") else value if unit in ("us", "usecond") else value * 1000.0
        rows.append((r["Kernel Name"], us))
    steps, cur = [], []
    for name, us in rows:
        if "Embed" in name and cur:
            steps.append(cur)
            cur = []
        cur.append((name, us))
    if cur:
        steps.append(cur)
    if not steps:
        sys.exit("no kernels found")
    chosen = steps[step]
    total = sum(us for _, us in chosen)
    groups = OrderedDict()
    for name, us in chosen:
        g = groups.setdefault(short(name), [0, 0.0])
        g[0] += 1
        g[1] += us
    print(f"{path}: {len(steps)} steps; step {step}: {len(chosen)} kernels, {total:.0f} us of kernel time")
    print("| kernel | launches | us | share |")
    print("|---|---|---|---|")
    for name, (n, us) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {n} | {us:.0f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
