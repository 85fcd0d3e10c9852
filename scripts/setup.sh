#!/usr/bin/env bash
# Installs everything mmdit needs on Debian 12, creates the project virtualenv with the pinned Python
# packages (scripts/requirements.txt), and builds into build/ (binary: build/mmdit). Idempotent: a
# second run only rebuilds what changed.
#   scripts/setup.sh            install + build
#   scripts/setup.sh --no-tests build without the test suite
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_TESTS=ON
for arg in "$@"; do
  case "$arg" in
    --no-tests) BUILD_TESTS=OFF ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

APT_PACKAGES=(build-essential cmake ninja-build pkg-config python3 python3-venv git
  libcli11-dev libspdlog-dev nlohmann-json3-dev libstb-dev libgtest-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libsentencepiece-dev ffmpeg)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python: the interpreter that makes the venv only needs to be 3.10+; torch's wheel is picked for it.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages (first time: a few GB, torch with its CUDA libraries)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r scripts/requirements.txt
  echo "$want" > "$stamp"
fi

TORCH_PREFIX=$(.venv/bin/python -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
  -DMMDIT_BUILD_TESTS=$BUILD_TESTS -DMMDIT_PYTHON="$PWD/.venv/bin/python" > build-configure.log 2>&1 \
  || { cat build-configure.log; exit 1; }
rm -f build-configure.log
cmake --build build -j2
echo "setup: built $(pwd)/build/mmdit"
