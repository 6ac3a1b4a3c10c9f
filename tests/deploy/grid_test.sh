#!/usr/bin/env bash
# deploy/bench/grid.sh end to end on the demo model (CPU) with tiny lengths: one row per run, the
# Poisson rates derived from the closed-loop run, and the server restarted with the
# prefix-caching off-switch (here a stand-in flag the server knows) for the second prefix row.
# usage: grid_test.sh SOURCE_DIR SBSERVE SBCTL
set -euo pipefail
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Below the ephemeral range (32768-60999), where port-0 listeners and client sockets of the other
# tests running at the same time are placed.
port=$((20000 + RANDOM % 12000))
env OUT="$work" MODEL= SBSERVE="$2" SBCTL="$3" PORT=$port METRICS_PORT=$((port + 1)) SERVE_FLAGS="--cpu-threads 2" \
  PROMPT_TOKENS=24 OUTPUT_TOKENS=4 CONCURRENCIES="1 4" REQUESTS_PER_CLIENT=2 MIN_REQUESTS=6 POISSON_S=0.5 \
  PREFIX_TOKENS=64 SUFFIX_TOKENS=8 PREFIX_CONCURRENCY=4 PREFIX_REQUESTS=8 NO_PREFIX_CACHE_FLAG=--max-num-seqs=3 \
  bash "$src/deploy/bench/grid.sh" >"$work/stdout" 2>"$work/stderr" || { cat "$work/stderr"; exit 1; }
python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
rows = [l for l in open(os.path.join(work, "grid.md")) if l.startswith("| ") and not l.startswith("| run ")]
assert open(os.path.join(work, "stdout")).read() == open(os.path.join(work, "grid.md")).read()
cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
assert [c[0] for c in cells] == ["closed loop"] * 2 + ["Poisson"] * 3 + ["shared prefix, cache on", "shared prefix, cache off"], cells
assert [c[1] for c in cells[:2]] == ["c=1", "c=4"], cells
c4 = json.load(open(os.path.join(work, "grid-c4.json")))
rates = [float(c[1].split()[0]) for c in cells[2:5]]
want = [round(c4["requests_per_s"] * f, 2) for f in (0.25, 0.5, 0.9)]
assert all(abs(a - b) <= 0.011 for a, b in zip(rates, want)), (rates, want)
for c in cells:
    assert len(c) == 12, c
    ok, failed, retried = (int(x) for x in c[3].split(" / "))
    assert failed == 0 and ok > 0, c
assert all(c[2] == "24 + 4" for c in cells[:5]), cells
assert all(c[2] == "72 + 4" for c in cells[5:]), cells
on, off = (open(os.path.join(work, f"grid-prefix-{m}.cmd")).read().splitlines() for m in ("on", "off"))
assert "--max-num-seqs=3" in off[0].split() and "--max-num-seqs=3" not in on[0].split(), (on, off)
assert "--shared-prefixes 1 --prefix-tokens 64 --prompt-tokens 8" in on[1] and on[1] == off[1], (on, off)
assert cells[0][3] == "6 / 0 / 0" and cells[1][3] == "8 / 0 / 0", cells  # max(6, 2 x c) requests
PY
echo "grid.sh: all checks passed"
