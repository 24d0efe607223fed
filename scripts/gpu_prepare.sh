#!/usr/bin/env bash
# Prepare .gpu/ for scripts/gpu_check.sh on a GPU machine that has no network (the device tool's):
#   .gpu/tokenizer/  the default model's tokenizer (config, tokenizer, chat template; no weights:
#                    the bench builds its 135m and 1b shapes from configs, random weights);
#   .gpu/whl/        wheels for Python 3.12 of what that machine's image lacks or has too old
#                    (its image: torch 2.11, transformers 5.17; no trl, datasets, liger-kernel).
# Run here, with a network, from the repository root's checkout that the device tool sends;
# .gpu/ is ignored by git (.git/info/exclude) and travels with `carry: [".gpu"]`.
#
#   bash scripts/gpu_prepare.sh        # then: run(command="bash scripts/gpu_check.sh", carry=[".gpu"])
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"
rm -rf .gpu && mkdir -p .gpu/whl
# Versions: this project's pins (constraints.txt), pure-Python wheels except multiprocess (py312).
pin() { grep -i "^$1==" constraints.txt | head -1; }
WHEELS=("$(pin transformers)" "$(pin trl)" "$(pin datasets)" "$(pin dill)" "$(pin multiprocess)"
        "$(pin fsspec)" "$(pin liger-kernel)")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl "${WHEELS[@]}"
PYTHONPATH=src HF_HUB_OFFLINE=1 "$PY" - <<'PY'
import shutil
from pathlib import Path
from tidpo.training.models import resolve_model
src, out = resolve_model("default"), Path(".gpu/tokenizer")
out.mkdir(parents=True)
for f in src.iterdir():
    if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
        shutil.copy2(f, out / f.name)
PY
du -sh .gpu .gpu/whl .gpu/tokenizer
ls .gpu/whl
