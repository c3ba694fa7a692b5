#!/usr/bin/env bash
# Installs everything napari-medkd needs on a fresh Debian/Ubuntu machine (Python 3.10+):
# system libraries for Qt and a virtual screen, a virtual environment in .venv, CPU torch 2.13.0
# and the package with all its extras, pinned to versions known to resolve together.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PKGS="libgl1 libegl1 libx11-6 libdbus-1-3 libfontconfig1 libfreetype6 libglib2.0-0 libxkbcommon0 \
xvfb xauth libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-render0 \
libxcb-shape0 libxcb-util1 libxcb-xkb1 libxkbcommon-x11-0"
if command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
stamp=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.medkd-stamp 2>/dev/null)" != "$stamp" ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # CPU torch first (pip then installs no CUDA build); elsewhere install the torch you need first.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[napari,qt,testing]"
  echo "$stamp" > .venv/.medkd-stamp
fi
echo "environment ready: $(pwd)/.venv"
