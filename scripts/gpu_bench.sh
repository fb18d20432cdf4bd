#!/usr/bin/env bash
# The GPU rows of docs/PERFORMANCE.md in one go, on a GPU machine without Ray.
#
#   scripts/gpu_bench.sh [ROW ...]        (no ROW: every row of ROWS; else these, in this order)
#
# Wheels in WHEELS_DIR (default .whl/; sam2 and what the machine lacks, see docs/PERFORMANCE.md)
# are installed into /tmp/site first. Each row is `labeler bench --no-ray`
# with its own arguments and a JSON report; rows start only while less than
# BUDGET_S seconds (default 540) have passed, and each is stopped after
# ROW_LIMIT_S (default 240). Everything lands in RESULTS_DIR (default $OUT,
# else bench-results): gpu-rows.json (every report, with the row's name,
# command and wall time) and gpu-rows.log.
set -u
cd "$(dirname "$0")/.."
RESULTS_DIR=${RESULTS_DIR:-${OUT:-bench-results}}
BUDGET_S=${BUDGET_S:-540}
ROW_LIMIT_S=${ROW_LIMIT_S:-240}
IMAGES=${IMAGES:-16}
WHEELS_DIR=${WHEELS_DIR:-.whl}
mkdir -p "$RESULTS_DIR/rows"
LOG="$RESULTS_DIR/gpu-rows.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G "$WHEELS_DIR/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS_DIR"/*.whl \
        || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# name|arguments of `labeler bench --no-ray --images $IMAGES`
ROWS=(
    "bf16|--dtype bf16"
    "fp32|--dtype fp32"
    "bf16-compiled|--dtype bf16 --compile"
    "bf16-compiled-1024-per-batch|--dtype bf16 --compile --points-per-batch 1024"
    "bf16-compiled-matched|--dtype bf16 --compile --prompts matched"
    "bf16-operators|--dtype bf16 --images 8 --top-operators 30"
    "bf16-check|--dtype bf16 --images 4 --batch-size 4 --check"
    "bf16-compiled-operators|--dtype bf16 --compile --images 8 --top-operators 30"
    "bf16-compiled-check|--dtype bf16 --compile --images 4 --batch-size 4 --check"
    "bf16-matched|--dtype bf16 --prompts matched"
    "bf16-1024-per-batch|--dtype bf16 --points-per-batch 1024"
    "bf16-64-per-batch|--dtype bf16 --points-per-batch 64"
)
declare -A ARGS
for row in "${ROWS[@]}"; do ARGS[${row%%|*}]=${row#*|}; done
if [ $# -gt 0 ]; then NAMES=("$@"); else NAMES=(); for row in "${ROWS[@]}"; do NAMES+=("${row%%|*}"); done; fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers, sam2; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$LOG"

started=$SECONDS
for name in "${NAMES[@]}"; do
    if [ -z "${ARGS[$name]+set}" ]; then echo "== $name: no such row" | tee -a "$LOG"; continue; fi
    args=${ARGS[$name]}
    if (( SECONDS - started >= BUDGET_S )); then
        echo "== $name: skipped, budget of ${BUDGET_S}s spent" | tee -a "$LOG"
        continue
    fi
    command="labeler bench --no-ray --images $IMAGES $args"
    echo "== $name: $command" | tee -a "$LOG"
    row_started=$SECONDS
    # shellcheck disable=SC2086
    timeout "$ROW_LIMIT_S" python3 -m labeler bench --no-ray --images "$IMAGES" $args \
        --json "$RESULTS_DIR/rows/$name.json" 2>&1 | tee -a "$LOG"
    echo "$name|$command|$((SECONDS - row_started))" >>"$RESULTS_DIR/rows/index"
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
rm -rf "$RESULTS_DIR/rows"
