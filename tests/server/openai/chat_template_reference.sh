#!/usr/bin/env bash
# Chat-template exactness test: installs the pinned npm packages (exit 77 = skipped when the
# registry is unreachable), renders the corpus with @huggingface/jinja, then runs the C++ side.
# usage: chat_template_reference.sh NPM_DIR SOURCE_DIR OUT_JSON TEST_BINARY
set -euo pipefail
npm_dir=$1 src=$2 out=$3 bin=$4
bash "$src/tests/server/openai/npm_setup.sh" "$npm_dir"
node "$src/tests/server/openai/reference.mjs" "$npm_dir" "$src/tests/data/chat_template/conversations.json" \
  "$src/tests/data/chat_template/synthetic_templates.json" "$out"
SBSERVE_CHAT_TEMPLATE_REFERENCE="$out" "$bin"
