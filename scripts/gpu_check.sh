#!/usr/bin/env bash
# GPU checks in at most 8 minutes on one CUDA GPU (docs/performance.md, "GPU check"):
#   1. the tests marked `gpu` (device placement, autocast, the fused head, Liger's head, the
#      compiled anchor decoding, torch_compile of the step, fp16 loss scaling, eval/explain);
#   2. `tidpo bench` at the 1b shape (Llama-3.2-1B's architecture, random weights): 8 pairs x
#      1024 tokens, gradient checkpointing on both sides, TRL, dpo, TI-DPO without the triplet
#      and with refresh 4 on a shuffled one-epoch run, with MFU, peak GPU memory, operator
#      counts; then the anchor engines (plain, static, compiled) on a refresh-4 window there;
#   3. `tidpo bench` at the 135m shape (SmolLM2-135M's), 2 pairs x 512 tokens, every
#      configuration (the refresh rows in a phase of their own, each phase with its TRL run).
# Both benches profile one extra step of every configuration (CPU and CUDA: where the time goes).
# Each phase has a time cap (the *_S variables) inside the overall BUDGET_S; the results go to
# $OUT (the device tool's folder; default gpu-check/): summary.md, gpu-check.log, and
# results.tgz (every JSON, log and profile).
#
#   bash scripts/gpu_prepare.sh                 # here, with a network: wheels + tokenizer in .gpu/
#   bash scripts/gpu_check.sh                   # there (device tool: carry [".gpu"])
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh   # on a CPU: the same phases at toy sizes
#
# Environment: PYTHON (default python3, or .venv/bin/python when present); OUT; BUDGET_S (465);
# TIDPO_BENCH_MODEL (the tokenizer's folder: .gpu/tokenizer when present, else the default model).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_CHECK_DRY_RUN:-0}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT_DIR=${OUT:-gpu-check}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
LOG=$OUT_DIR/gpu-check.log
BUDGET_S=${BUDGET_S:-465}
END=$((SECONDS + BUDGET_S))
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT/src

say() { echo "[gpu-check $(date -u +%H:%M:%S) +$((SECONDS))s] $*" | tee -a "$LOG"; }
finish() {  # whatever ran: the summary and one archive (the device tool returns 8 files at most)
    "$PY" -m tidpo.studies.bench_summary "$WORK" >"$OUT_DIR/summary.md" 2>>"$LOG" || true
    cp "$LOG" "$WORK/" 2>/dev/null
    tar -czf "$OUT_DIR/results.tgz" -C "$WORK" . 2>>"$LOG" || true
    say "done: $OUT_DIR/summary.md, results.tgz"
}
trap finish EXIT
# phase NAME CAP_S CMD...: run CMD (output to NAME.log and the log) for at most CAP_S seconds,
# less when the budget is nearly spent; a phase that fails or is cut leaves the next ones to run.
phase() {
    local name=$1 cap=$2
    shift 2
    local left=$((END - SECONDS))
    if [ "$left" -lt 20 ]; then say "$name: skipped (budget spent)"; return 0; fi
    [ "$cap" -gt "$left" ] && cap=$left
    say "$name: start (cap ${cap}s)"
    local start=$SECONDS
    timeout --kill-after=10 "$cap" "$@" >"$WORK/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$WORK/$name.log" >>"$LOG"
    say "$name: exit $rc after $((SECONDS - start))s$([ $rc -eq 124 ] && echo ' (cut at its cap)')"
}

if [ -d .gpu/whl ] && [ "$DRY" != 1 ]; then  # the packages the device's image lacks
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/tidpo-site \
        .gpu/whl/*.whl >>"$LOG" 2>&1 || say "wheels: install failed"
    export PYTHONPATH=/tmp/tidpo-site:$PYTHONPATH
fi
MODEL=${TIDPO_BENCH_MODEL:-$([ -d .gpu/tokenizer ] && echo "$ROOT/.gpu/tokenizer" || echo default)}
[ -d .gpu/tokenizer ] && export TIDPO_TEST_TOKENIZER=${TIDPO_TEST_TOKENIZER:-$ROOT/.gpu/tokenizer}
"$PY" - >"$WORK/device.txt" 2>&1 <<PY
import torch, transformers, importlib.util as u
dry = "$DRY" == "1"
assert dry or torch.cuda.is_available(), "no CUDA GPU: nothing to check (GPU_CHECK_DRY_RUN=1 on a CPU)"
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
print(f"{name}; torch {torch.__version__}; transformers {transformers.__version__}; "
      f"capability {torch.backends.cpu.get_cpu_capability()}; trl "
      f"{'yes' if u.find_spec('trl') else 'MISSING'}; liger "
      f"{'yes' if u.find_spec('liger_kernel') else 'missing'}")
PY
rc=$?
cat "$WORK/device.txt" | tee -a "$LOG"
[ $rc -ne 0 ] && exit $rc

BENCH=("$PY" -m tidpo bench --model "$MODEL" --repeats 1)
if [ "$DRY" = 1 ]; then  # toy networks, a few rows, fp32: the script's flow, not its numbers
    TOY=(--toy --precision fp32 --steps 1 --warmup 0 --max-length 48)
    B1=(--batch 1 --configs trl_dpo,tidpo_refresh4)
    B135=(--batch 1 --configs trl_dpo,dpo)
    R135=(--batch 1 --configs trl_dpo,tidpo_refresh1)
    A1=(--batch 1 --engines plain,static)
else
    TOY=(--steps 3 --warmup 1)
    B1=(--batch 8 --max-length 1024 --checkpointing
        --configs trl_dpo,dpo,tidpo_no_triplet,tidpo_refresh4)
    B135=(--batch 2 --max-length 512
          --configs trl_dpo,dpo,tidpo_no_triplet,tidpo_precomputed,tidpo_precomputed_all)
    R135=(--batch 2 --max-length 512 --configs trl_dpo,tidpo_refresh1,tidpo_refresh4)
    A1=(--batch 8 --max-length 1024)
fi

phase gpu-tests "${TESTS_S:-120}" "$PY" -m pytest -m gpu -q -ra -p no:cacheprovider tests/test_gpu.py
phase bench-1b "${BENCH_1B_S:-150}" "${BENCH[@]}" --shape 1b "${B1[@]}" "${TOY[@]}" \
    --op-count --profile "$WORK/profiles-1b" --json "$WORK/bench-1b.json"
phase anchors-1b "${ANCHORS_S:-60}" "${BENCH[@]}" --anchors --shape 1b --anchor-window 4 \
    "${A1[@]}" "${TOY[@]}" --json "$WORK/anchors-1b.json"
phase bench-135m "${BENCH_135M_S:-65}" "${BENCH[@]}" --shape 135m "${B135[@]}" "${TOY[@]}" \
    --op-count --profile "$WORK/profiles-135m" --json "$WORK/bench-135m.json"
phase bench-135m-refresh "${REFRESH_135M_S:-80}" "${BENCH[@]}" --shape 135m "${R135[@]}" \
    "${TOY[@]}" --op-count --json "$WORK/bench-135m-refresh.json"
