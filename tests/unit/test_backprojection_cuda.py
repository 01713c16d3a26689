"""The CUDA back-projection kernel's logic, run by numba's CUDA simulator (no GPU needed).

The simulator must be chosen before numba.cuda is first imported, so the comparison runs in
a fresh interpreter with ``NUMBA_ENABLE_CUDASIM=1``; it executes every thread of the kernel
in Python, hence the small sizes. The same kernel on a real GPU is compared with the CPU
reference in tests/gpu/test_fbp_gpu.py.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (the gpu extra)")

SCRIPT = r"""
import json, sys
import numpy as np
from holostream.workers.backend import get_backend
from holostream.workers.backprojection import backproject
from holostream.workers.backprojection_cuda import Z_PER_THREAD, backproject_cuda

nz, n, cols, center_px = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
b = 5
filtered = rng.standard_normal((b, nz, cols)).astype(np.float32)
angles = np.concatenate([[0.0, np.pi / 2], rng.uniform(-np.pi, 2 * np.pi, b - 2)])
weights = rng.uniform(0.1, 0.5, b)
start = rng.standard_normal((nz, n, n)).astype(np.float32)
ours, ref = start.copy(), start.copy()
backproject_cuda(ours, filtered, angles, weights, (cols - 1) / 2 + center_px)
backproject(ref, filtered, angles, weights, center_px, get_backend("cpu", threads=1), reference=True)
added = ref - start
print(json.dumps({"max_error": float(np.abs(ours - ref).max()), "scale": float(np.abs(added).max()),
                  "z_per_thread": Z_PER_THREAD}))
"""


@pytest.mark.parametrize("nz, n, cols, center_px", [(5, 9, 8, 0.0), (3, 6, 11, -1.5)])
def test_cuda_kernel_matches_reference_in_the_simulator(nz, n, cols, center_px):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps([nz, n, cols, center_px])],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # nz = 5 spans two z-chunks of 4 with a partial one: the bounds of every index are hit
    assert result["z_per_thread"] < 5
    assert result["scale"] > 0.1
    assert result["max_error"] <= 2e-5 * result["scale"] + 1e-6
