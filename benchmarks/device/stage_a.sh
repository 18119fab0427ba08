#!/usr/bin/env bash
# Device call 1 of 3 (carry .gpuA): stage the payload in /tmp/stage and install its wheels there.
mkdir -p /tmp/stage && cp -r .gpuA /tmp/stage/ &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/stage/.gpuA/site .gpuA/whl/*.whl
PYTHONPATH=/tmp/stage/.gpuA/site:/tmp/stage/.gpuA/pkgs:src python3 -c "import torch, trl, datasets, peft, transformers, sentence_transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'trl', trl.__version__, 'transformers', transformers.__version__, 'sentence-transformers', sentence_transformers.__version__, 'peft', peft.__version__)"
nvidia-smi -L
