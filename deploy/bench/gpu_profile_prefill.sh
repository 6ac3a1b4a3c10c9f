#!/usr/bin/env bash
# Where the prefill kernels' warps wait: Nsight Compute's warp-state statistics (stall reasons per
# issued instruction), issue-slot, tensor-pipe and special-function-unit utilisation, for the mma
# and the wgmma kernel on one bench row (default row 1: 36 x 64, 4 x 4096). The question it answers
# (tests/bench/kernels.md, prefill round 3): both kernels sit at ~0.24 SM clocks per logit while no
# single resource is above ~33% busy — latency of the weight step's dependent chain, or something
# else? Expects sb_attn_bench in $PWD/.gpu/{bin,lib} and $OUT.
set -u
OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$PWD/.gpu/lib:/usr/local/cuda/lib64
B=$PWD/.gpu/bin
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
ROW=${ROW:-1}
echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
for k in mma wgmma; do
  timeout 240 "$NCU" --clock-control none --kernel-name regex:sb_attn_prefill --launch-skip 5 --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis --section Occupancy --section InstructionStats --section SourceCounters \
    $B/sb_attn_bench --only prefill --prefill-row "$ROW" --prefill-kernel "$k" > "$OUT/ncu_prefill_$k.txt" 2>&1
  echo "$k: rc $?"
  grep -E "Stall|Issue Slots|Issued Warp|Eligible|Active Warps|Pipe|Achieved Occupancy|Throughput|Hit Rate|Duration|Busy" "$OUT/ncu_prefill_$k.txt" | head -60
done
# The SASS of both kernels (d = 64 instantiations), to read the weight step's instruction mix.
CUOBJ=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
"$CUOBJ" -sass "$B/sb_attn_bench" 2>/dev/null | awk '/Function : .*sb_attn_prefill/{p=1} /Function : /&&!/sb_attn_prefill/{p=0} p' > "$OUT/sass_prefill.txt"
echo "sass: $(wc -l < "$OUT/sass_prefill.txt") lines"
