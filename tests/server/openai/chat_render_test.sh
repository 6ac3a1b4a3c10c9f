#!/usr/bin/env bash
# sb_chat_render prints one result per case: the rendered text, or the template's error.
set -euo pipefail
bin=$1 input=$2
out=$("$bin" "$input")
want='[
  {
    "text": "<s><|user|>hi</s><|assistant|>"
  },
  {
    "error": "system must be first"
  }
]'
if [ "$out" != "$want" ]; then
  echo "sb_chat_render output differs"; echo "got:"; echo "$out"; echo "want:"; echo "$want"; exit 1
fi
if "$bin" /nonexistent.json 2>/dev/null; then echo "a missing input must fail"; exit 1; fi
echo ok
