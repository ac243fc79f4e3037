#!/usr/bin/env bash
# metarl's two commands. Each does all the set-up it needs (a .venv with a CPU build of torch
# unless a GPU is present), then:
#   ./run.sh pipeline   runs the whole pipeline on params.yaml (`dvc repro`) and prints results
#   ./run.sh test       runs the linters and the test suite (what CI runs)
# Anything after the command is passed on (to `dvc repro` or to pytest).
set -euo pipefail
cd "$(dirname "$0")"

TORCH_VERSION="2.13.0"
VENV="${METARL_VENV:-.venv}"

# Keep every tool offline and quiet.
export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '\033[1m[metarl]\033[0m %s\n' "$*" >&2; }

install_torch() {
  if python -c "import torch" 2>/dev/null; then return; fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    log "GPU found: installing torch==$TORCH_VERSION (CUDA build)"
    pip install -q "torch==$TORCH_VERSION"
    return
  fi
  # CPU-only machine: never let pip resolve the multi-GB CUDA wheel. Prefer a wheel already on
  # this machine (pip's find-links), else the CPU index (override with METARL_TORCH_INDEX).
  local tmp
  tmp="$(mktemp -d)"
  if pip download -q --no-index --no-deps "torch==$TORCH_VERSION" -d "$tmp" 2>/dev/null; then
    log "installing the local CPU wheel of torch==$TORCH_VERSION"
    pip install -q "$tmp"/torch-*.whl
  else
    local index="${METARL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    log "installing torch==$TORCH_VERSION (CPU build) from $index"
    pip install -q "torch==$TORCH_VERSION" --index-url "$index"
  fi
  rm -rf "$tmp"
  python -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
}

setup() {
  local py="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -c 'import sys; assert sys.version_info >= (3, 10), "metarl needs Python >= 3.10"'
    log "creating $VENV"
    "$py" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  install_torch
  local stamp="$VENV/.metarl-installed" want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing metarl and its dependencies (first time: about a minute)"
    # mujoco 4 keeps its library in a separate mujoco-core package that a downgrade to the pinned
    # 3.3.0 (Meta-World's pin) leaves behind, breaking `import mujoco`: remove all of it first.
    if pip show -q mujoco-core 2>/dev/null; then
      pip uninstall -q -y mujoco mujoco-core mujoco-studio
    fi
    pip install -q -e ".[dev,mujoco,metaworld,cluster]"
    echo "$want" > "$stamp"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  pipeline)
    setup
    log "running the pipeline: dvc repro (tasks → tune → train → evaluate → register → report)"
    start=$(date +%s)
    dvc repro "$@"
    log "done in $(( $(date +%s) - start )) s. Meta-test on held-out tasks (reports/meta_test.md):"
    cat reports/meta_test.md
    log "report: reports/report.html (opens offline) · plot: plots/adaptation_curve.png · metrics: dvc metrics show · runs: mlflow ui --backend-store-uri sqlite:///mlflow.db"
    ;;
  test)
    setup
    export METARL_NO_PROGRESS=1
    log "ruff"
    ruff check metarl pipelines tests
    log "mypy (metarl, pipelines)"
    mypy metarl pipelines
    log "pytest"
    python -m pytest -q "$@"
    ;;
  *)
    echo "usage: ./run.sh pipeline [dvc repro args] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
