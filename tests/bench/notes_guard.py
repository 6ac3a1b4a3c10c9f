#!/usr/bin/env python3
"""Guards the benchmark notes: every file under 256 KB, no heading repeated within a file, and
every results table names its card and date (in the text of its own section or of a parent
section, above the table).

usage: notes_guard.py FILE.md|DIR ...    exit 1 and one line per problem when any check fails
       notes_guard.py --self-test      plants each kind of problem and checks it is caught
"""
import os
import re
import sys
import tempfile

MAX_BYTES = 256 * 1024
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
CARD = re.compile(r"\b(H100|H200|A100|B200|NVIDIA|developer VM|vCPU)\b")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def check(path):
    problems = []
    size = os.path.getsize(path)
    if size >= MAX_BYTES:
        problems.append(f"{path}: {size} bytes, over the {MAX_BYTES}-byte limit")
        return problems  # a runaway file: the other checks would only repeat the problem
    seen = {}
    stack = []  # [(level, [lines of the heading and its body so far])]
    in_table = False
    in_code = False
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for no, line in enumerate(lines, 1):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else HEADING.match(line)
        if m:
            level, text = len(m.group(1)), m.group(2)
            key = text.strip().lower()
            if key in seen:
                problems.append(f"{path}:{no}: heading '{text}' repeats line {seen[key]}")
            else:
                seen[key] = no
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, [line]))
            in_table = False
            continue
        is_row = not in_code and line.startswith("|")
        if is_row and not in_table:
            context = "\n".join(l for _, body in stack for l in body)
            missing = [what for what, rx in (("card", CARD), ("date", DATE)) if not rx.search(context)]
            if missing:
                problems.append(f"{path}:{no}: table without its {' and '.join(missing)} above it")
        in_table = is_row
        if stack:
            stack[-1][1].append(line)
        else:
            stack.append((0, [line]))
    return problems


def self_test():
    good = "# T\n\n## Run — H200, 2026-11-30\n\n### Rows\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    cases = {
        "good": (good, False),
        "repeated heading": (good + "\n### Rows\n\ntext\n", True),
        "repeated heading, other level": (good + "\n## rows\n", True),
        "table without date": ("# T\n\n## Run — H200\n\n| a |\n|---|\n", True),
        "table without card": ("# T\n\n## Run, 2026-11-30\n\n| a |\n|---|\n", True),
        "card and date only in a sibling section": (good + "\n## Other\n\n| a |\n|---|\n", True),
        "oversized": ("# T\n\n" + "x" * MAX_BYTES + "\n", True),
        "heading in a code block is not a heading": (good + "\n```\n### Rows\n```\n", False),
    }
    failed = 0
    with tempfile.TemporaryDirectory() as d:
        for name, (text, should_fail) in cases.items():
            p = os.path.join(d, "notes.md")
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            got = bool(check(p))
            ok = got == should_fail
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: {'caught' if got else 'passed'}")
    return 1 if failed else 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) < 2:
        print(__doc__)
        return 2
    files = []
    for arg in argv[1:]:  # a folder stands for every .md file in it
        files += sorted(os.path.join(arg, n) for n in os.listdir(arg) if n.endswith(".md")) \
            if os.path.isdir(arg) else [arg]
    problems = [p for path in files for p in check(path)]
    for p in problems:
        print(p)
    print(f"{len(files)} notes files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
