#!/usr/bin/env bash
# Collect, into .whl/ (git-ignored through .git/info/exclude), the wheels that the GPU check
# needs on a lent GPU machine that has no network: Python 3.12 there, with numpy, scipy, h5py,
# cupy-cuda13x, pytest, hypothesis, scikit-image, pillow, prometheus-client already installed.
# Usage (here, with network):  bash scripts/gpu-wheels.sh
# Then carry ".whl" in the device call; scripts/gpu-check.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# name==version, one each (two versions of one package stop the install there). Left out:
# cufinufft (114 MB, over the 64 MiB a call may carry) and the CUDA 12 cuFFT that
# astra-toolbox's wheel links against (its CUDA FBP cannot load there without it).
WHEELS=(
  pyzmq==27.3.0            # the daemon's sockets
  nxtomo==3.1.1 silx==3.1.3 pint==0.26.2   # NXtomo files (reconstruct/simulate)
  httomolibgpu==6.0.1 tomobar==2026.3.1.0 nvtx==0.2.17 pywavelets==1.10.0   # GPU FBP peers
  astra-toolbox==2.5.0     # tomobar imports it; its CUDA part needs cuFFT 11 (see above)
  finufft==2.5.1
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
du -sh .whl
