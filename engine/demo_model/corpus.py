#!/usr/bin/env python3
"""Builds the demo model's training text from this repository's own files (documentation, sources,
scripts): corpus.txt (training, documents separated by <|endoftext|>) and heldout.txt (documents the
model never sees, for the perplexity test). Deterministic: files in sorted order, a fixed held-out set.

usage: corpus.py OUT_DIR      (run from anywhere inside the checkout)
"""
import os
import subprocess
import sys

SUFFIXES = (".md", ".cc", ".h", ".cu", ".cuh", ".py", ".sh", ".proto", ".yaml", ".txt", ".mjs")
# Held out: prose the model is scored on but never trained on.
HELDOUT = {"deploy/k8s/README.md", "client/README.md", "proto/README.md"}
SKIP_PREFIXES = ("tests/data/", "engine/demo_model/")


def main():
    out = sys.argv[1]
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                          check=True).stdout.strip()
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    train, held = [], []
    for f in sorted(files):
        if not f.endswith(SUFFIXES) or f.startswith(SKIP_PREFIXES):
            continue
        with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
            text = fh.read().strip()
        if not text or len(text) > 200_000:
            continue
        (held if f in HELDOUT else train).append(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as fh:
        fh.write("<|endoftext|>".join(train))
    with open(os.path.join(out, "heldout.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n\n".join(held) + "\n")
    print(f"{len(train)} training documents, {sum(map(len, train))} characters; "
          f"{len(held)} held out, {sum(map(len, held))} characters")


if __name__ == "__main__":
    main()
