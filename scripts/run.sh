#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Python 3.11:
#   bash scripts/run.sh demo   set everything up, then run the main job (napari-semiconv demo)
#   bash scripts/run.sh test   set everything up, then lint, validate the manifest and run all tests
# Setup is idempotent: system packages are installed only when missing, the virtual environment
# (.venv, or $SEMICONV_VENV) is created once and re-installed only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-}
case "$job" in demo|test|setup) ;; *) echo "usage: bash scripts/run.sh demo|test|setup" >&2; exit 2 ;; esac

venv=${SEMICONV_VENV:-.venv}
py=${PYTHON:-python3}

# --- system packages napari needs for a real viewer under a virtual X server -----------------
sys_pkgs=(xvfb xauth libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0)
missing=()
for p in "${sys_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python environment ------------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.semiconv-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing napari-semiconv and its dependencies into $venv (first time: a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned to the wheels that lie on this machine's disk
  "$venv/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -m pip install -q -e ".[all,testing]" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -c "import napari_semiconv, torch, napari" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$want" >"$stamp"
fi

case "$job" in
  setup) echo "[setup] done" ;;
  demo) exec "$venv/bin/napari-semiconv" demo --out "${DEMO_OUT:-demo-output}" ;;
  test)
    "$venv/bin/ruff" check src tests benchmarks
    "$venv/bin/npe2" validate napari-semiconv
    "$venv/bin/npe2" validate napari-semiconv --imports
    exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -ra tests
    ;;
esac
