#!/usr/bin/env bash
# The GPU checks in one run, for a lent GPU machine (docs/benchmarks.md): the whole test suite
# on CUDA, then the attention scorer at T = 512, 2048 and 8192 in bf16 on random weights of the
# 1.5B pack's shape (the packs cannot travel there). About 6 minutes on an H100 or H200.
#
#     bash benchmarks/gpu_check.sh        # logs in $OUT, else ./gpu-check
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
python3 -c "import torch, transformers, triton; print('torch', torch.__version__,
  'transformers', transformers.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider 2>&1 | tee "$out/pytest.log" | tail -25
timeout 300 python3 benchmarks/attention.py --config benchmarks/configs/qwen2.5-coder-1.5b.json \
  --dtype bfloat16 --lengths 512 2048 8192 --repeats 5 --min-seconds 1 2>&1 | tee "$out/attention.log"
