#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("To run on a GPU"): run on a CUDA machine with the
# project installed (`trainer` on PATH), from the repository root.
#
#   scripts/gpu_bench.sh [OUT_DIR]          default OUT_DIR: gpu-bench
#   env: MODEL=DIR   a local model directory (e.g. a saved gogamza/kobart-base-v2; default the
#                    bench's small random BART), REPEATS (default 3), STEPS (packing, default 300)
#
# Each line below is one `trainer bench` comparison (ours against ours with one flag changed,
# ABBA rounds, medians) or the packing measurement; OUT_DIR gets a .json and a .txt of each.
set -euo pipefail

out=${1:-gpu-bench}
mkdir -p "$out"
model=()
if [[ -n "${MODEL:-}" ]]; then model=(--model "$MODEL"); fi
repeats=${REPEATS:-3}

python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_bench.sh: no CUDA device here")'
nvidia-smi -L | tee "$out/gpus.txt"

compare() {  # NAME, then trainer bench options
    local name=$1
    shift
    echo "== $name: trainer bench $*"
    trainer bench "${model[@]}" --repeats "$repeats" --output "$out/$name.json" "$@" | tee "$out/$name.txt"
}

compare baseline                                    # ours on CUDA against the tuning guide's setup
compare bf16 --against bf16=false                   # bf16 mixed precision against fp32
compare tf32 --flags bf16=false --against tf32=false  # TF32 matmuls, both sides in fp32
compare fused-adamw --against optim=adamw_torch     # fused AdamW against the per-tensor loop
compare workers --against dataloader_num_workers=0  # data-loading workers (ours: up to 4) against none
compare greedy-eval --against eval_num_beams=1      # 4-beam evaluation against greedy (eval samples/s)

echo "== packing: 1, 2, 4 trials at once on GPU 0"
python scripts/gpu_pack.py "$out/packing.json" 1 2 4 | tee "$out/packing.txt"
echo "figures in $out/"
