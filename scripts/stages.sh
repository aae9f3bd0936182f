#!/bin/sh
# The three stages on this machine, each stage's best.yaml the next stage's preset:
#   sh scripts/stages.sh [OUTPUT_ROOT] [trainer search options...]
# e.g. sh scripts/stages.sh outputs/stages --smoke   (the built-in task, minutes on a CPU)
# A stage that ends in a tie writes no best.yaml: the next stage is not started (confirm the tie
# with --confirm, or evaluate on more examples).
set -e
root=${1:-outputs/stages}
[ $# -gt 0 ] && shift
stages=$(dirname "$0")/../manifests/stages
previous=""
for stage in 1 2 3; do
    if [ -n "$previous" ] && [ ! -f "$previous/best.yaml" ]; then
        echo "stage $((stage - 1)) named no winner ($previous/best.yaml is missing): stage $stage not started" >&2
        exit 1
    fi
    trainer search "$stages/stage$stage.yaml" --output_dir="$root/stage$stage" \
        ${previous:+--set=preset=$previous/best.yaml} "$@"
    previous=$root/stage$stage
done
if [ -f "$previous/best.yaml" ]; then
    echo "staged search done: $previous/best.yaml holds the three stages' winners"
else
    echo "staged search done; stage 3 named no winner: $root/stage2/best.yaml holds stages 1 and 2's"
fi
