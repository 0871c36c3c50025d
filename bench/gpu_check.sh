#!/usr/bin/env bash
# The one-GPU check of issue 9 (<= 8 min on one H100/H200; needs only torch + transformers): bench/gpu_check.sh [OUT_DIR]
cd "$(dirname "$0")/.." && exec python3 bench/gpu_check.py --out "${1:-${OUT:-gpu_check_out}}"
