#!/usr/bin/env bash
# GPU check, ready for a machine with one H100/H200 (torch + transformers, no network, no DeepSpeed needed).
# Runs in well under 8 minutes; prints one JSON result: real tokens/s, model and hardware TFLOP/s, MFU against the
# card model's bf16 peak, peak memory, and packed (2+ rows) vs unpacked loss in fp32 and bf16 per attention backend.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 420 python bench/gpu_check.py --steps "${STEPS:-30}" --samples-per-step "${SAMPLES:-16}" --seq "${SEQ:-2048}" \
  | tee "${OUT:-/tmp}/gpu_check.json"
