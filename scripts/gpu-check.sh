#!/usr/bin/env bash
# One command for a lent GPU machine (bare, no network; Python 3.12 with numpy, scipy, h5py,
# cupy-cuda13x, pytest): the gpu tests, `holostream bench --preset id16b --device gpu`, and a
# short live scan through the daemon in split mode on the GPU. Everything lands as JSON (and
# logs) under $OUT; each step has its own time limit, the whole stays under 8 minutes.
#
#   here:   bash scripts/gpu-wheels.sh                      # once: wheels into .whl/
#   device: bash scripts/gpu-check.sh          (carry: [".whl"])
#   here, a dry run on the CPU: OUT=/tmp/gpu-check bash scripts/gpu-check.sh --cpu
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=gpu
[ "${1:-}" = "--cpu" ] && DEVICE=cpu
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
REPO=$PWD
LOGS=/tmp/gpu-check-logs
rm -rf "$LOGS" && mkdir -p "$LOGS"  # at most 8 files come back from $OUT: logs join into one
PY=${PYTHON:-python3}
[ "$DEVICE" = cpu ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-16}
started=$(date +%s)

# 1. Packages the image lacks, from the carried wheels; holostream itself from this tree
#    (a package folder of links, so the code that runs is the code that was sent).
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$LOGS/wheels.log" 2>&1 || echo "wheel install failed: see logs.txt"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import holostream.service" 2>/dev/null; then
  mkdir -p /tmp/hs/holostream
  ln -sf "$REPO/holostream_pkg/__init__.py" /tmp/hs/holostream/__init__.py
  for sub in workers shared service; do ln -sfn "$REPO/$sub" "/tmp/hs/holostream/$sub"; done
  export PYTHONPATH=/tmp/hs${PYTHONPATH:+:$PYTHONPATH}
fi
HS=("$PY" -m holostream.service.cli)

step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, record rc and time
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  printf '{"step": "%s", "rc": %d, "seconds": %.1f, "limit_s": %d}\n' "$name" "$rc" \
    "$(python3 -c "print($t1 - $t0)")" "$limit" >> "$LOGS/steps.jsonl"
  echo "$name: rc=$rc ($(tail -n 1 "$LOGS/$name.log" | cut -c1-160))"
}

# 2. What the machine is, and whether cupy can run a kernel and an FFT.
step env 60 "$PY" - <<PYEOF
import json, platform, subprocess
info = {"python": platform.python_version(), "device": "$DEVICE"}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError as exc:
    info["nvidia_smi"] = f"not available: {exc}"
for name in ("numpy", "scipy", "cupy", "zmq", "h5py", "nxtomo", "astra", "httomolibgpu", "finufft", "cufinufft"):
    try:
        mod = __import__(name)
        info[name] = getattr(mod, "__version__", "present")
    except Exception as exc:  # report why, do not stop: the check goes on without it
        info[name] = f"missing: {type(exc).__name__}: {exc}"[:200]
if "$DEVICE" == "gpu":
    try:
        import cupy as cp
        x = cp.arange(1 << 20, dtype=cp.float32)
        info["cupy_kernel_fft"] = float(cp.abs(cp.fft.fft(x * 2)).sum().get()) > 0
        info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception as exc:
        info["cupy_kernel_fft"] = f"failed: {type(exc).__name__}: {exc}"[:300]
print(json.dumps(info, indent=1))
open("$OUT/env.json", "w").write(json.dumps(info, indent=1) + "\n")
PYEOF

# 3. The gpu-marked tests (on the CPU dry run: the same files, which then skip).
step gpu-tests 150 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$OUT/gpu-tests.xml" tests

# 4. The reference workload's speed.
if [ "$DEVICE" = gpu ]; then
  step bench-id16b 200 "${HS[@]}" bench --preset id16b --device gpu --repeat 2 --json "$OUT/bench-id16b-gpu.json"
else
  step bench-demo 200 "${HS[@]}" bench --preset demo --device cpu --repeat 1 --no-peers --json "$OUT/bench-demo-cpu.json"
fi

# 5. A short live scan through the daemon: split mode, the reconstructor on the device.
cat > "$LOGS/live.toml" <<TOML
[workers]
device = "$DEVICE"
mode = "split"
batch = 32
TOML
if [ "$DEVICE" = gpu ]; then
  step live 120 "${HS[@]}" demo --out "$OUT/live" --config "$LOGS/live.toml" --size 1024 --projections 360 \
    --fps 200 --binning 2 --workers 8
else
  step live 120 "${HS[@]}" demo --out "$OUT/live" --config "$LOGS/live.toml" --size 128 --projections 90 \
    --fps 60 --binning 2 --workers 1
fi
[ -f "$OUT/live/figures.json" ] && cp "$OUT/live/figures.json" "$OUT/live-figures.json"
rm -rf "$OUT/live"  # PNG/HDF5 stay behind: only 8 files come back

# 6. One summary.
"$PY" - <<PYEOF
import json, os
out = "$OUT"
summary = {"device": "$DEVICE", "seconds": $(date +%s) - $started,
           "steps": [json.loads(l) for l in open("$LOGS/steps.jsonl")]}
for name in ("env.json", "bench-id16b-gpu.json", "bench-demo-cpu.json", "live-figures.json"):
    path = os.path.join(out, name)
    if os.path.exists(path):
        summary[name] = json.load(open(path))
print(json.dumps({k: v for k, v in summary.items() if k in ("device", "seconds", "steps")}, indent=1))
open(os.path.join(out, "summary.json"), "w").write(json.dumps(summary, indent=1) + "\n")
PYEOF
for f in "$LOGS"/*.log; do echo "===== $(basename "$f")"; tail -n 150 "$f"; done > "$OUT/logs.txt"
ls "$OUT"
