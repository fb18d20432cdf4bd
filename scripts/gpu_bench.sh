#!/usr/bin/env bash
# Every GPU row of docs/PERFORMANCE.md in one call of at most 8 minutes, on a lent GPU machine without Ray.
#
#   scripts/gpu_bench.sh [ROW ...]        (no ROW: every row of ROWS, in order; else these, in this order)
#
# Wheels in WHEELS_DIR (default .whl/; sam2 and what the machine lacks, see docs/PERFORMANCE.md) are
# installed into /tmp/site first. A row starts only while less than BUDGET_S seconds (default 400) have
# passed, and is stopped after ROW_LIMIT_S (default 200), so the call ends within 8 minutes. Everything
# lands in RESULTS_DIR (default $OUT, else bench-results): gpu-rows.json (every report, with the row's
# name, command and wall time) and gpu-rows.log.
#
# The rows, most needed first:
#   compiled          the defaults, compiled bf16 (target 20 images/s per GPU); its first actor saves the
#                     compile cache; its warm-up is a cold compile
#   compiled-matched  --prompts matched, compiled bf16 (target 50 images/s)
#   fast-paths        scripts/fast_path_check.py: each fast path against the plain fp32 path (decoder logits
#                     prompt by prompt; scoring and RLE on pinned SAM-like proposals)
#   compiled-cached   as compiled, with an empty local inductor cache (a new node): its warm-up is what a
#                     second actor pays with the shared compile cache
#   tiled             scripts/tile_bench.py: a 4096x3072 image whole and with --tile auto (20 tiles of 1024), bf16
#                     eager: seconds per megapixel of each stage, peak host and device memory
#   eager             bf16 without compiling
#   pipeline          labeler run through Ray Data on this GPU, if Ray is installed (the lent machines have
#                     none and its wheel is too large to carry: the row then says so and is skipped)
#   compiled-1024     --points-per-batch 1024, compiled bf16
#   fp32              the plain path
set -u
cd "$(dirname "$0")/.."
RESULTS_DIR=${RESULTS_DIR:-${OUT:-bench-results}}
BUDGET_S=${BUDGET_S:-400}
ROW_LIMIT_S=${ROW_LIMIT_S:-200}
IMAGES=${IMAGES:-16}
WHEELS_DIR=${WHEELS_DIR:-.whl}
mkdir -p "$RESULTS_DIR/rows"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)
LOG="$RESULTS_DIR/gpu-rows.log"
CACHE="$RESULTS_DIR/compile-cache"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS_DIR/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS_DIR"/*.whl \
        || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
BENCH="python3 -m labeler bench --images $IMAGES"

# name|environment (VAR=value ...)|command; a bench row's --json is added by the loop
ROWS=(
    "compiled|TORCHINDUCTOR_CACHE_DIR=$RESULTS_DIR/inductor-a|$BENCH --no-ray --dtype bf16 --compile --compile-cache $CACHE"
    "compiled-matched|TORCHINDUCTOR_CACHE_DIR=$RESULTS_DIR/inductor-a|$BENCH --no-ray --dtype bf16 --compile --compile-cache $CACHE --prompts matched"
    "fast-paths||python3 scripts/fast_path_check.py --device cuda --sam2 random:l"
    "compiled-cached|TORCHINDUCTOR_CACHE_DIR=$RESULTS_DIR/inductor-b|$BENCH --no-ray --dtype bf16 --compile --compile-cache $CACHE"
    "tiled||python3 scripts/tile_bench.py --device cuda --sam2 random:l --dinov2 random:large --dtype bf16 --points-per-side 32 --objects 60 --tiles off auto"
    "eager||$BENCH --no-ray --dtype bf16"
    "pipeline||$BENCH --images 32 --dtype bf16 --compile --compile-cache $CACHE"
    "compiled-1024|TORCHINDUCTOR_CACHE_DIR=$RESULTS_DIR/inductor-a|$BENCH --no-ray --dtype bf16 --compile --compile-cache $CACHE --points-per-batch 1024"
    "fp32||$BENCH --no-ray --dtype fp32"
)
declare -A ENVS COMMANDS
for row in "${ROWS[@]}"; do
    name=${row%%|*}; rest=${row#*|}
    ENVS[$name]=${rest%%|*}; COMMANDS[$name]=${rest#*|}
done
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=(); for row in "${ROWS[@]}"; do NAMES+=("${row%%|*}"); done; fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$LOG"

started=$SECONDS
for name in "${NAMES[@]}"; do
    if [ -z "${COMMANDS[$name]+set}" ]; then echo "== $name: no such row" | tee -a "$LOG"; continue; fi
    if (( SECONDS - started >= BUDGET_S )); then
        echo "== $name: skipped, budget of ${BUDGET_S}s spent" | tee -a "$LOG"
        continue
    fi
    if [ "$name" = pipeline ] && ! python3 -c "import ray" 2>/dev/null; then
        echo "== $name: skipped, Ray is not installed on this machine" | tee -a "$LOG"
        echo "$name|not run: no Ray here|0" >>"$RESULTS_DIR/rows/index"
        continue
    fi
    command=${COMMANDS[$name]}
    json="$RESULTS_DIR/rows/$name.json"
    echo "== $name: ${ENVS[$name]} $command" | tee -a "$LOG"
    row_started=$SECONDS
    # shellcheck disable=SC2086
    env ${ENVS[$name]} timeout "$ROW_LIMIT_S" $command --json "$json" 2>&1 | tee -a "$LOG"
    echo "$name|${ENVS[$name]} $command|$((SECONDS - row_started))" >>"$RESULTS_DIR/rows/index"
done

python3 - "$RESULTS_DIR" <<'PY'
import json, pathlib, sys

folder = pathlib.Path(sys.argv[1])
rows = []
for line in (folder / "rows" / "index").read_text().splitlines():
    name, command, seconds = line.split("|")
    path = folder / "rows" / f"{name}.json"
    report = json.loads(path.read_text()) if path.exists() else None
    rows.append({"row": name, "command": command, "wall_seconds": int(seconds), "report": report})
(folder / "gpu-rows.json").write_text(json.dumps(rows, indent=1))
print(f"wrote {folder / 'gpu-rows.json'}: {sum(r['report'] is not None for r in rows)} of {len(rows)} rows")
PY
rm -rf "$RESULTS_DIR/rows" "$RESULTS_DIR"/inductor-* "$CACHE"
