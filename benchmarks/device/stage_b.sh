#!/usr/bin/env bash
# Device call 2 of 3 (carry .gpuB): stage faiss and the first part of the GGUF file.
cp -r .gpuB /tmp/stage/ &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target /tmp/stage/.gpuB/site .gpuB/whl/*.whl
ls -a /tmp/stage
