#!/usr/bin/env bash
# GPU check, ready for a machine with one H100/H200 (torch + transformers, no network, no DeepSpeed needed).
# Runs in under 8 minutes; prints two JSON results: the 7B-shaped step per trainer configuration (tokens/s, projected
# 28-layer step, MFU and HFU, memory per token per layer, host syncs; today's configuration against the new default),
# and the 1B check (real steps, MFU, packed (2+ rows) vs unpacked loss in fp32 and bf16 per attention backend).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
# The 7B-shaped step per trainer configuration first (bench/gpu_step.py, ~4 minutes), then the 1B end-to-end check.
timeout 330 python bench/gpu_step.py | tee "${OUT:-/tmp}/gpu_step.json"
timeout 150 python bench/gpu_check.py --steps "${STEPS:-12}" --samples-per-step "${SAMPLES:-16}" --seq "${SEQ:-2048}" \
  | tee "${OUT:-/tmp}/gpu_check.json"
