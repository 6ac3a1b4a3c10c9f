#!/usr/bin/env bash
# sbmodel end to end on generated checkpoints; fails on the first wrong result.
set -euo pipefail
sbmodel=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$sbmodel" create --preset tiny --variant R2 --dtype bf16 --seed 5 --kv-heads 2 "$dir/m" >/dev/null
out=$("$sbmodel" inspect "$dir/m")
echo "$out"
grep -q "remainder         R2" <<<"$out" || fail "inspect did not report R2"
grep -q "kv heads          2 (gqa)" <<<"$out" || fail "inspect did not report gqa"
grep -q "weights dtype     BF16" <<<"$out" || fail "inspect did not report BF16"

a=$("$sbmodel" generate --model "$dir/m" --ids 1,2,3 --max-tokens 8 --backend cpu --ignore-eos)
b=$("$sbmodel" generate --model "$dir/m" --ids 1,2,3 --max-tokens 8 --backend cpu --ignore-eos)
[ "$a" = "$b" ] || fail "greedy generation is not deterministic: $a vs $b"
[ "$(tr ',' '\n' <<<"$a" | wc -l)" -eq 8 ] || fail "expected 8 ids, got $a"
s1=$("$sbmodel" generate --model "$dir/m" --ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --ignore-eos --backend cpu)
s2=$("$sbmodel" generate --model "$dir/m" --ids 1,2,3 --max-tokens 8 --temperature 1 --seed 9 --ignore-eos --backend cpu)
[ "$s1" = "$s2" ] || fail "seeded sampling is not deterministic"

"$sbmodel" logits --model "$dir/m" --ids 5,17,3 --out "$dir/l.npy" --backend cpu
size=$(stat -c %s "$dir/l.npy")
[ "$size" -eq $((128 + 3 * 512 * 4)) ] || fail "logits file has $size bytes"

# bench: the CPU backend samples on the host whatever --sample says; a bad --sample is refused.
out=$("$sbmodel" bench --model "$dir/m" --batch 2 --prompt-len 16 --gen 4 --backend cpu)
echo "$out"
grep -q "^backend cpu  batch 2  prompt 16  gen 4  sampling host (logits copied)$" <<<"$out" || fail "bench header: $out"
grep -qE "^prefill: [0-9.]+ ms, [0-9.]+ tokens/s$" <<<"$out" || fail "bench prefill line: $out"
grep -qE "^decode:  [0-9.]+ ms/step, [0-9.]+ tokens/s$" <<<"$out" || fail "bench decode line: $out"
if "$sbmodel" bench --model "$dir/m" --batch 1 --prompt-len 4 --gen 1 --backend cpu --sample gpu 2>"$dir/err"; then
  fail "bench accepted --sample gpu"
fi
grep -q "device or host" "$dir/err" || fail "unclear error: $(cat "$dir/err")"
# bench --prefill-reps N (median of N prefill steps) and --mixed-chunk L (decodes plus one L-token chunk).
out=$("$sbmodel" bench --model "$dir/m" --batch 2 --prompt-len 16 --gen 4 --backend cpu --prefill-reps 3 --mixed-chunk 20)
echo "$out"
grep -qE "^prefill: [0-9.]+ ms, [0-9.]+ tokens/s \(median of 3\)$" <<<"$out" || fail "bench prefill-reps line: $out"
grep -qE "^mixed:   2 decodes \+ a 20-token chunk: [0-9.]+ ms/step \(median of 3\)$" <<<"$out" || fail "bench mixed line: $out"
for bad in "--prefill-reps 0" "--mixed-chunk -1"; do
  # shellcheck disable=SC2086
  if "$sbmodel" bench --model "$dir/m" --batch 1 --prompt-len 4 --gen 1 --backend cpu $bad 2>"$dir/err"; then
    fail "bench accepted $bad"
  fi
  grep -q "must be at least" "$dir/err" || fail "unclear error for $bad: $(cat "$dir/err")"
done

if "$sbmodel" inspect "$dir/nonexistent" 2>"$dir/err"; then fail "inspect of a missing dir succeeded"; fi
grep -q "not a checkpoint directory" "$dir/err" || fail "unclear error: $(cat "$dir/err")"
if "$sbmodel" generate --model "$dir/m" --ids 1 --max-tokens 5000 2>"$dir/err"; then fail "over-long generation accepted"; fi
grep -q "exceeds the context" "$dir/err" || fail "unclear error: $(cat "$dir/err")"
echo "sbmodel CLI: all checks passed"
