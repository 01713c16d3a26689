"""Scan buffers: created in one process, attached in others, gone from /dev/shm after unlink."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from holostream.service.daemon.channels import spawn_context
from holostream.shared.scanbuffers import ScanBuffers, layout, sweep, sweep_orphans

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs POSIX shared memory")


def leftovers(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


@pytest.fixture
def prefix(request):
    p = f"holostream_{os.getpid()}_test{abs(hash(request.node.name)) % 10**6}"
    yield p
    sweep(p)


def small_layout():
    return layout((8, 10), "uint16", n_slots=3, n_groups=4, binned_shape=(4, 5), n_workers=2)


def test_layout_matches_the_architecture_table():
    specs = small_layout()
    assert specs["ring"].shape == (3, 8, 10) and specs["ring"].dtype == "uint16"
    assert specs["reference"].shape == (2, 8, 10) and specs["reference"].dtype == "float32"
    assert specs["sinogram"].shape == (4, 4, 5)
    assert specs["volume"].shape == (2, 4, 5, 5) and specs["volume"].dtype == "float32"
    assert specs["weights"].shape == (2,) and specs["weights"].dtype == "float64"
    assert specs["absorption_sum"].shape == (2, 2, 4, 5) and specs["absorption_sum"].dtype == "float64"
    assert specs["absorption_weights"].shape == (2, 2)
    with pytest.raises(ValueError, match="n_slots=0"):
        layout((8, 10), "uint16", 0, 4, (4, 5), 2)


def child_writes(description, value):
    """Runs in a spawned process: attach, check what the parent wrote, answer, close."""
    buffers = ScanBuffers.attach(description)
    expected = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10)
    ok = np.array_equal(buffers.ring, expected)
    buffers.volume[1] = value if ok else -1.0
    buffers.weights[1] += 0.5
    buffers.close()


def test_create_attach_in_spawned_child_and_unlink(prefix):
    buffers = ScanBuffers.create(prefix, small_layout())
    assert len(leftovers(prefix)) == 7
    assert not buffers.volume.any()
    buffers.ring[:] = np.arange(buffers.ring.size, dtype=np.uint16).reshape(buffers.ring.shape)
    proc = spawn_context().Process(target=child_writes, args=(buffers.description(), 7.25))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(buffers.volume[1], np.full((4, 5, 5), 7.25, np.float32))
    assert not buffers.volume[0].any()
    assert buffers.weights.tolist() == [0.0, 0.5]
    # the child's exit left the segments alone
    assert len(leftovers(prefix)) == 7
    buffers.close()
    buffers.unlink()
    assert leftovers(prefix) == []


def test_independent_process_exit_neither_unlinks_nor_warns(tmp_path, prefix):
    """A process with its own resource tracker attaches and exits: segments stay, no warning."""
    script = textwrap.dedent("""
        import json, sys
        from holostream.shared.scanbuffers import ScanBuffers
        b = ScanBuffers.attach(json.loads(sys.argv[1]))
        b.reference[0, 0, 0] = 3.5
        b.close()
    """)
    import json
    buffers = ScanBuffers.create(prefix, small_layout())
    out = subprocess.run([sys.executable, "-c", script, json.dumps(buffers.description())],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "leaked" not in out.stderr and "resource_tracker" not in out.stderr
    assert len(leftovers(prefix)) == 7
    assert buffers.reference[0, 0, 0] == 3.5
    buffers.close()
    buffers.unlink()
    assert leftovers(prefix) == []


def test_whole_lifecycle_in_a_fresh_interpreter_is_silent(prefix):
    """Create, attach often in three spawned children at once, unlink: nothing on stderr or left."""
    script = textwrap.dedent(f"""
        import multiprocessing as mp
        from holostream.shared.scanbuffers import ScanBuffers, layout

        def attach(d):
            for _ in range(100):  # concurrent attaches once raced in the shared resource tracker
                ScanBuffers.attach(d).close()

        if __name__ == "__main__":
            specs = layout((8, 10), "float32", 2, 2, (8, 10), 1)
            b = ScanBuffers.create("{prefix}", specs)
            ctx = mp.get_context("spawn")
            ps = [ctx.Process(target=attach, args=(b.description(),)) for _ in range(3)]
            [p.start() for p in ps]
            [p.join() for p in ps]
            b.close()
            b.unlink()
    """)
    path = f"/tmp/{prefix}_lifecycle.py"
    with open(path, "w") as f:
        f.write(script)
    try:
        out = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert leftovers(prefix) == []


def test_sweep_removes_leftovers_of_one_prefix_only(prefix):
    a = ScanBuffers.create(prefix + "_1", small_layout())
    b = ScanBuffers.create(prefix.replace("test", "other"), small_layout())
    a.close()
    removed = sweep(prefix)
    assert len(removed) == 7 and leftovers(prefix) == []
    assert len(leftovers(b.prefix)) == 7
    b.close()
    b.unlink()
    with pytest.raises(ValueError, match="refusing"):
        sweep("")


def test_create_refuses_more_than_dev_shm_holds(prefix):
    huge = layout((16384, 16384), "uint16", 10**5, 1, (1, 1), 1)
    with pytest.raises(MemoryError, match="GB of shared memory"):
        ScanBuffers.create(prefix, huge)
    assert leftovers(prefix) == []


def test_attach_checks_sizes_against_the_description(prefix):
    buffers = ScanBuffers.create(prefix, small_layout())
    description = buffers.description()
    description["parts"]["ring"]["shape"] = [30, 8, 10]
    with pytest.raises(ValueError, match=f"{prefix}_ring has 480 bytes, 4800 expected"):
        ScanBuffers.attach(description)
    buffers.close()
    buffers.unlink()
    with pytest.raises(FileNotFoundError):
        ScanBuffers.attach(buffers.description())


def test_sweep_orphans_removes_segments_of_dead_daemons_only(prefix):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30)
    dead_pid = int(proc.stdout)  # that process has exited
    orphan = ScanBuffers.create(f"holostream_{dead_pid}_7", small_layout())
    orphan.close()
    alive = ScanBuffers.create(prefix, small_layout())
    removed = sweep_orphans()
    assert sorted(n for n in removed if n.startswith(f"holostream_{dead_pid}_7_")) == sorted(
        f"holostream_{dead_pid}_7_{part}" for part in small_layout())
    assert leftovers(f"holostream_{dead_pid}_") == [] and len(leftovers(prefix)) == 7
    alive.close()
    alive.unlink()
