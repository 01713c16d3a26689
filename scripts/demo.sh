#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the built-in demo: the live service, a simulated detector
# streaming a scan into it and a subscriber saving the final slices as PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/holostream demo --out demo-output "$@"
