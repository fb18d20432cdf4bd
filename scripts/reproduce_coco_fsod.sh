#!/usr/bin/env bash
# The published COCO-FSOD tables, reproduced with labeler on a machine with COCO 2017 and the checkpoints.
#
#   scripts/reproduce_coco_fsod.sh COCO_ROOT OUT
#
# COCO_ROOT holds annotations/instances_{train,val}2017.json, train2017/ and val2017/. For each number of
# shots (SHOTS, default "10 30"): the authors' reference set (scripts/coco_fsod_references.py, SEED default
# 33) -> labeler build-bank -> labeler run on val2017 with --merge soft, keeping its proposals -> labeler
# rescore with --merge graph-diffusion (the same proposals: no second model run) -> labeler eval over the
# novel classes (CLASSES). Prints bbox and segm nAP beside the published numbers, and writes OUT/table.tsv.
#
# Environment: SAM2 (default facebook/sam2-hiera-large, the paper's SAM 2.0 checkpoint), DINOV2 (default
# facebook/dinov2-large), RUN_ARGS (more `labeler run` options, e.g. "--sam2-actors 4 --dinov2-actors 2
# --gpus-per-actor 0.5 --dtype bf16 --compile"), RESCORE_ARGS (more `labeler rescore` options), PYTHON
# (default python3). docs/fidelity.md: none of these numbers has been measured by labeler's developers.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 COCO_ROOT OUT" >&2
    exit 2
fi
COCO_ROOT=$1
OUT=$2
SHOTS=${SHOTS:-"10 30"}
SEED=${SEED:-33}
SAM2=${SAM2:-facebook/sam2-hiera-large}
DINOV2=${DINOV2:-facebook/dinov2-large}
PYTHON=${PYTHON:-python3}
CLASSES=${CLASSES:-"person,bicycle,car,motorcycle,airplane,bus,train,boat,bird,cat,dog,horse,sheep,cow,bottle,chair,couch,potted plant,dining table,tv"}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TRAIN="$COCO_ROOT/annotations/instances_train2017.json"
VAL="$COCO_ROOT/annotations/instances_val2017.json"
for required in "$TRAIN" "$VAL" "$COCO_ROOT/train2017" "$COCO_ROOT/val2017"; do
    [ -e "$required" ] || { echo "$required: missing (COCO_ROOT must hold COCO 2017)" >&2; exit 2; }
done

# published nAP (bbox, segm) by shots and merge; "-" where the paper gives none
published() {
    case "$1/$2" in
        10/soft) echo "36.6 -" ;;
        30/soft) echo "36.8 34.2" ;;
        10/graph-diffusion) echo "44.0 -" ;;
        30/graph-diffusion) echo "45.8 -" ;;
        *) echo "- -" ;;
    esac
}

metric() {  # metric EVAL_JSON IOU_TYPE -> AP in percent
    "$PYTHON" -c 'import json, sys
metrics = json.load(open(sys.argv[1]))["metrics"]
print("%.1f" % (100 * metrics[sys.argv[2]]["AP"]) if sys.argv[2] in metrics else "-")' "$1" "$2"
}

printf "shots\tmerge\tbbox nAP\tsegm nAP\tpublished bbox\tpublished segm\n" >"$OUT/table.tsv"
for shots in $SHOTS; do
    refs="$OUT/refs-$shots.json"
    bank="$OUT/bank-$shots.safetensors"
    "$PYTHON" "$HERE/coco_fsod_references.py" --train "$TRAIN" --shots "$shots" --seed "$SEED" --classes "$CLASSES" \
        --out "$refs"
    labeler build-bank --refs "$refs" --images "$COCO_ROOT/train2017" --out "$bank" --dinov2 "$DINOV2" --sam2 "$SAM2"
    # shellcheck disable=SC2086
    labeler run --bank "$bank" --images "$VAL" --image-root "$COCO_ROOT/val2017" --out "$OUT/run-$shots-soft" \
        --sam2 "$SAM2" --merge soft --keep-proposals float32 ${RUN_ARGS:-}
    # shellcheck disable=SC2086
    labeler rescore --pred "$OUT/run-$shots-soft" --bank "$bank" --out "$OUT/run-$shots-graph-diffusion" \
        --merge graph-diffusion ${RESCORE_ARGS:-}
    for merge in soft graph-diffusion; do
        labeler eval --pred "$OUT/run-$shots-$merge" --gt "$VAL" --categories "$CLASSES" \
            --out "$OUT/eval-$shots-$merge.json" >/dev/null
        read -r pub_bbox pub_segm <<<"$(published "$shots" "$merge")"
        printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$shots" "$merge" "$(metric "$OUT/eval-$shots-$merge.json" bbox)" \
            "$(metric "$OUT/eval-$shots-$merge.json" segm)" "$pub_bbox" "$pub_segm" >>"$OUT/table.tsv"
    done
done
column -t -s $'\t' "$OUT/table.tsv" 2>/dev/null || cat "$OUT/table.tsv"
