#!/usr/bin/env bash
# Create .venv beside the checkout and install holostream with its test and peer extras.
# Every install step is explicit; re-running it is cheap (pip skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Core runtime (numpy, scipy, pyzmq, h5py, nxtomo) + pytest + the independent peers used in
# tests and benchmarks (nabu for Paganin, astra-toolbox for FBP), and the browser viewer (aiohttp).
.venv/bin/python -m pip install --quiet -e '.[test,peers,view,compression,cluster]'
