#!/usr/bin/env python3
"""Mutation campaign: plants the hand-written mutants of mutants.txt, one at a time, into a
scratch copy of the tree and reports which tests kill them.

Run on demand (not registered in CTest, not in CI):

    tests/mutants/run.sh                      # every mutant
    tests/mutants/run.sh -j 4 sampler-topk-off-by-one kv-refuses-exact-fit
    tests/mutants/run.sh --area kv            # one area
    tests/mutants/run.sh --check              # only verify that every snippet applies
    tests/mutants/run.sh --list

For each mutant: apply it (abort before building anything if a snippet does not occur exactly
once), rebuild incrementally only the binaries of its area's tests, run those tests
(ctest -R <area regex>); if they all pass, build everything and run the rest of the CPU suite
(ctest -LE gpu) with --stop-on-failure. Then restore the file. Results: KILLED (first failing
test), SURVIVED, BUILD-FAIL (the mutant does not compile: a defect of the mutant) or, for a
mutant marked `equivalent`, "equivalent" with its explanation when it survives.
"""

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

# Tests run first for each area (a ctest -R regex); a mutant's `tests` field overrides it.
AREA_TESTS = {
    "sampler": r"^Sampler",
    "scheduler": r"^(Scheduler|Engine\.)",
    "kv": r"^(KvBlock|Scheduler|PrefixCache)",
    "stop": r"^(StopMatcher|Scheduler\.Stop)",
    "tokenizer": r"^(AddedTokens|BpeModel|Cli|Config|Decoders|DemoTokenizer|Encode|IncrementalDecoder|Load|"
                 r"Normalizers|PostProcessor|PreTokenizers|Threads|Tokenizer|Utf8|tokenizer_fuzz_replay)",
    "checkpoint": r"^(CheckpointTest|Checkpoint|Safetensors|CpuBackend|VariantTest|engine\.)",
    "metrics": r"^(TextFormat|Registry|Counter|Gauge|Histogram|BucketHelpers|ServingMetrics|MetricsHttpServer|"
               r"MetricsObserver)",
    "frontdoor": r"^(Server\.|Engine\.|Convert|FrontDoor)",
}


class MutantError(Exception):
    pass


def parse_mutants(path):
    """Parses mutants.txt into a list of dicts with id, file, area, tests, description,
    equivalent and hunks [(original, replacement)]."""
    mutants = []
    cur = None
    mode = None  # None, "orig", "repl"
    orig, repl = [], []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if mode == "orig":
            if line == "===":
                mode = "repl"
            else:
                orig.append(line)
            continue
        if mode == "repl":
            if line == ">>>":
                o = "\n".join(orig) + "\n"
                r = "\n".join(repl) + "\n" if repl else ""
                cur["hunks"].append((o, r))
                orig, repl, mode = [], [], None
            else:
                repl.append(line)
            continue
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", s)
        if m:
            cur = {"id": m.group(1), "hunks": [], "line": lineno}
            mutants.append(cur)
            continue
        if cur is None:
            raise MutantError(f"{path}:{lineno}: text before the first [id]")
        if line == "<<<":
            mode = "orig"
            continue
        m = re.fullmatch(r"(\w+)\s*=\s*(.*)", s)
        if not m:
            raise MutantError(f"{path}:{lineno}: cannot parse {line!r}")
        cur[m.group(1)] = m.group(2)
    if mode is not None:
        raise MutantError(f"{path}: unterminated hunk at the end")
    seen = set()
    for mu in mutants:
        for key in ("file", "area", "description"):
            if key not in mu:
                raise MutantError(f"{path}:{mu['line']}: mutant {mu['id']} has no {key}")
        if not mu["hunks"]:
            raise MutantError(f"{path}:{mu['line']}: mutant {mu['id']} has no hunk")
        if mu["area"] not in AREA_TESTS and "tests" not in mu:
            raise MutantError(f"{path}:{mu['line']}: mutant {mu['id']}: unknown area {mu['area']}")
        if mu["id"] in seen:
            raise MutantError(f"{path}:{mu['line']}: duplicate id {mu['id']}")
        seen.add(mu["id"])
        mu.setdefault("tests", AREA_TESTS.get(mu["area"]))
    return mutants


def mutate(text, mu):
    """Applies the mutant's hunks in order; each original must occur exactly once."""
    for i, (o, r) in enumerate(mu["hunks"]):
        n = text.count(o)
        if n != 1:
            raise MutantError(f"mutant {mu['id']}: hunk {i + 1} occurs {n} times in {mu['file']} "
                              f"(must be exactly once):\n{o}")
        text = text.replace(o, r)
    return text


def log(msg):
    print(msg, flush=True)


def run(cmd, logf, cwd=None, env=None, timeout=None):
    logf.write(f"$ {' '.join(cmd)}\n")
    logf.flush()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode
    except subprocess.TimeoutExpired:
        logf.write(f"\n[timed out after {timeout} s]\n")
        return 124


def copy_tree(src, dst):
    """Copies the files git knows (tracked, and untracked but not ignored) into dst, writing
    only files whose content changed so that the scratch build stays incremental."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=src, check=True, capture_output=True).stdout.decode()
    files = sorted(f for f in out.split("\0") if f and os.path.isfile(os.path.join(src, f)))
    manifest = os.path.join(dst, ".mutants-manifest")
    old = set()
    if os.path.exists(manifest):
        with open(manifest) as f:
            old = set(f.read().split("\n")) - {""}
    changed = 0
    for f in files:
        s, d = os.path.join(src, f), os.path.join(dst, f)
        with open(s, "rb") as fh:
            data = fh.read()
        if os.path.exists(d):
            with open(d, "rb") as fh:
                if fh.read() == data:
                    continue
        os.makedirs(os.path.dirname(d), exist_ok=True)
        with open(d, "wb") as fh:
            fh.write(data)
        shutil.copymode(s, d)
        changed += 1
    for f in old - set(files):
        try:
            os.remove(os.path.join(dst, f))
        except FileNotFoundError:
            pass
    with open(manifest, "w") as f:
        f.write("\n".join(files) + "\n")
    return len(files), changed


class Campaign:
    def __init__(self, args):
        self.args = args
        self.scratch = os.path.abspath(args.scratch)
        self.src = os.path.join(self.scratch, "src")
        self.build = os.path.join(self.scratch, "build")
        self.logs = os.path.join(self.scratch, "logs")
        os.makedirs(self.src, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.env = dict(os.environ)
        self.env.setdefault("CCACHE_BASEDIR", os.path.dirname(self.scratch))
        self.jobs = str(args.jobs)

    def ninja(self, targets, logf):
        return run(["ninja", "-C", self.build, "-j", self.jobs] + targets, logf, env=self.env)

    def configure(self):
        with open(os.path.join(self.logs, "configure.log"), "w") as logf:
            if not os.path.exists(os.path.join(self.build, "build.ninja")):
                cmd = ["cmake", "-S", self.src, "-B", self.build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                       "-DSBSERVE_CUDA=OFF"]
                if shutil.which("ccache"):
                    cmd.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
                if run(cmd, logf, env=self.env) != 0:
                    raise MutantError(f"configure failed: see {logf.name}")
            log(f"building the unmutated tree in {self.build} ...")
            if self.ninja([], logf) != 0:
                raise MutantError(f"the unmutated tree does not build: see {logf.name}")

    def ctest(self, extra, logf, junit):
        if os.path.exists(junit):
            os.remove(junit)
        cmd = ["ctest", "--test-dir", self.build, "-LE", "gpu", "-j", self.jobs, "--stop-on-failure",
               "--output-on-failure", "--timeout", str(self.args.test_timeout), "--output-junit", junit] + extra
        rc = run(cmd, logf, env=self.env)
        failed = []
        if os.path.exists(junit):
            for tc in ET.parse(junit).getroot().iter("testcase"):
                if tc.get("status") in ("fail", "failed"):
                    failed.append(tc.get("name"))
        if rc != 0 and not failed:
            # ctest gives up before running anything (a test that cannot be found, say).
            failed.append("(ctest exit %d, see log)" % rc)
        return failed

    def area_targets(self, regex, logf):
        """The build outputs the area's tests run (their executables and tools they are given)."""
        p = subprocess.run(["ctest", "--test-dir", self.build, "-N", "-LE", "gpu", "-R", regex,
                            "--show-only=json-v1"], capture_output=True, env=self.env)
        if p.returncode != 0:
            return None, 0
        info = json.loads(p.stdout)
        targets = set()
        for t in info.get("tests", []):
            for arg in t.get("command", []) or []:
                a = os.path.realpath(arg) if os.path.isabs(arg) else None
                if a and a.startswith(self.build + os.sep) and not a.endswith((".json", ".txt")):
                    targets.add(os.path.relpath(a, self.build))
        n = len(info.get("tests", []))
        logf.write(f"area tests: {n}, targets: {sorted(targets)}\n")
        return sorted(targets), n

    def run_mutant(self, mu):
        path = os.path.join(self.src, mu["file"])
        with open(path, encoding="utf-8") as f:
            original = f.read()
        mutated = mutate(original, mu)
        t0 = time.time()
        logpath = os.path.join(self.logs, mu["id"] + ".log")
        junit = os.path.join(self.logs, mu["id"] + ".junit.xml")
        result = {"id": mu["id"], "area": mu["area"], "description": mu["description"],
                  "equivalent": mu.get("equivalent"), "log": logpath}
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(mutated)
            with open(logpath, "w") as logf:
                targets, n = self.area_targets(mu["tests"], logf)
                # Build the area's binaries first: a failing build is reported, never run.
                if self.ninja(targets or [], logf) != 0:
                    result.update(result="BUILD-FAIL", test="")
                    return result
                failed = self.ctest(["-R", mu["tests"]], logf, junit) if n else []
                if failed:
                    result.update(result="KILLED", test=failed[0], stage="area")
                    return result
                if self.args.area_only:
                    result.update(result="SURVIVED", test="", stage="area only")
                    return result
                if self.ninja([], logf) != 0:
                    result.update(result="BUILD-FAIL", test="")
                    return result
                failed = self.ctest(["-E", mu["tests"]], logf, junit)
                if failed:
                    result.update(result="KILLED", test=failed[0], stage="full")
                else:
                    result.update(result="SURVIVED", test="", stage="full")
                return result
        finally:
            with open(path, "w", encoding="utf-8") as f:
                f.write(original)
            result["seconds"] = round(time.time() - t0)

    def confirm(self, result):
        """A test outside the mutant's area that fails may be flaky: after restoring the file, run
        it on the unmutated tree. If it fails there too, the kill does not count."""
        name = result["test"]
        with open(result["log"], "a") as logf:
            logf.write("\n== confirming on the unmutated tree\n")
            if self.ninja([], logf) != 0:
                raise MutantError(f"the unmutated tree no longer builds: see {result['log']}")
            failed = self.ctest(["-R", "^" + re.escape(name) + "$"], logf,
                                os.path.join(self.logs, result["id"] + ".confirm.junit.xml"))
        if failed:
            result["result"] = "SURVIVED"
            result["note"] = f"{name} fails on the unmutated tree too (flaky?)"


def table(results, header):
    rows = [header, "",
            "| id | area | description | result | killing test |",
            "| --- | --- | --- | --- | --- |"]
    counts = {}
    for r in results:
        res = r["result"]
        test = r.get("test", "")
        if res == "SURVIVED" and r.get("equivalent"):
            res = "equivalent"
            test = r["equivalent"]
        elif res == "KILLED" and r.get("equivalent"):
            res = "KILLED (marked equivalent: fix mutants.txt)"
        elif res == "KILLED" and r.get("stage") == "full":
            test += " (full suite)"
        if r.get("note"):
            test = (test + "; " if test else "") + r["note"]
        counts[res.split(" ")[0]] = counts.get(res.split(" ")[0], 0) + 1
        desc = r["description"].replace("|", "\\|")
        rows.append(f"| {r['id']} | {r['area']} | {desc} | {res} | {test.replace('|', '/')} |")
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    rows += ["", f"{len(results)} mutants. {summary}."]
    return "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ids", nargs="*", help="mutant ids or shell patterns (default: all)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--area", action="append", help="only mutants of this area (repeatable)")
    ap.add_argument("--mutants", default=os.path.join(HERE, "mutants.txt"))
    ap.add_argument("--scratch", default=os.environ.get("SBSERVE_MUTANTS_DIR", os.path.join(REPO, "build-mutants")),
                    help="scratch directory: src/ (the copy), build/, logs/ (default: build-mutants/ in the "
                         "repository, which .gitignore covers)")
    ap.add_argument("--table", help="write the kill table here too (always written to <scratch>/kill-table.md)")
    ap.add_argument("--test-timeout", type=int, default=300, help="ctest --timeout for tests without their own")
    ap.add_argument("--area-only", action="store_true", help="skip the full-suite stage (quick, incomplete)")
    ap.add_argument("--no-confirm", action="store_true",
                    help="do not re-run a full-suite killer on the unmutated tree")
    ap.add_argument("--check", action="store_true", help="only check that every selected mutant applies")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args()

    mutants = parse_mutants(args.mutants)
    if args.ids:
        chosen = [m for m in mutants if any(fnmatch.fnmatchcase(m["id"], p) for p in args.ids)]
        unknown = [p for p in args.ids if not any(fnmatch.fnmatchcase(m["id"], p) for m in mutants)]
        if unknown:
            sys.exit(f"no mutant matches: {' '.join(unknown)}")
        mutants = chosen
    if args.area:
        mutants = [m for m in mutants if m["area"] in args.area]
    if args.list:
        for m in mutants:
            print(f"{m['id']:50} {m['area']:10} {m['file']}")
        return 0

    # Pre-flight on the working tree: every snippet must apply before anything is built.
    bad = []
    for m in mutants:
        try:
            with open(os.path.join(REPO, m["file"]), encoding="utf-8") as f:
                mutate(f.read(), m)
        except (MutantError, FileNotFoundError) as e:
            bad.append(str(e))
    if bad:
        print("\n".join(["MUTANTS DO NOT APPLY:"] + bad), file=sys.stderr)
        return 2
    log(f"{len(mutants)} mutants apply cleanly")
    if args.check:
        return 0

    c = Campaign(args)
    n, changed = copy_tree(REPO, c.src)
    log(f"copied {n} files into {c.src} ({changed} changed)")
    c.configure()
    results = []
    try:
        for i, m in enumerate(mutants, 1):
            log(f"[{i}/{len(mutants)}] {m['id']} ({m['file']}) ...")
            r = c.run_mutant(m)
            if r["result"] == "KILLED" and r.get("stage") == "full" and not args.no_confirm:
                c.confirm(r)
            results.append(r)
            log(f"    {r['result']} {r.get('test', '')} [{r.get('stage', '')}, {r['seconds']} s]")
    finally:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        header = (f"Kill table: {time.strftime('%Y-%m-%d %H:%M')}, commit {git.stdout.strip()}"
                  f"{' (with uncommitted changes)' if dirty.stdout.strip() else ''}, -j {args.jobs}"
                  f"{', area tests only' if args.area_only else ''}")
        text = table(results, header)
        for p in [os.path.join(c.scratch, "kill-table.md")] + ([args.table] if args.table else []):
            with open(p, "w") as f:
                f.write(text)
        print("\n" + text)
    bad = [r for r in results if r["result"] == "BUILD-FAIL" or
           (r["result"] == "SURVIVED" and not r.get("equivalent"))]
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MutantError as e:
        sys.exit(f"error: {e}")
