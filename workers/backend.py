"""Array namespace and FFTs, chosen once: numpy + scipy.fft on CPU, cupy on GPU.

Every plan object in ``workers`` takes a :class:`Backend` and uses ``backend.xp`` for
array creation and the backend's FFT methods, so one algorithm serves both devices.
cupy is imported only when a GPU backend is asked for.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Backend:
    """An array namespace (``xp``) with matching FFTs.

    Attributes
    ----------
    name : {"cpu", "gpu"}
    xp : module
        ``numpy`` or ``cupy``.
    threads : int
        FFT worker threads on CPU (ignored on GPU).
    """

    name: str
    xp: ModuleType
    threads: int = 1
    _fft: ModuleType = field(repr=False, default=None)  # scipy.fft or cupyx.scipy.fft

    def _kw(self) -> dict[str, Any]:
        return {"workers": self.threads} if self.name == "cpu" else {}

    def fft2(self, a, overwrite_x: bool = False):
        """2-D FFT over the last two axes (complex in, complex out)."""
        return self._fft.fft2(a, axes=(-2, -1), overwrite_x=overwrite_x, **self._kw())

    def ifft2(self, a, overwrite_x: bool = False):
        """Inverse 2-D FFT over the last two axes."""
        return self._fft.ifft2(a, axes=(-2, -1), overwrite_x=overwrite_x, **self._kw())

    def rfft(self, a, n: int | None = None, axis: int = -1):
        """Real-to-complex FFT along ``axis`` (zero-padded to ``n``)."""
        return self._fft.rfft(a, n=n, axis=axis, **self._kw())

    def irfft(self, a, n: int | None = None, axis: int = -1):
        """Complex-to-real inverse of :meth:`rfft`."""
        return self._fft.irfft(a, n=n, axis=axis, **self._kw())

    def rfft2(self, a):
        """Real-to-complex 2-D FFT over the last two axes."""
        return self._fft.rfft2(a, axes=(-2, -1), **self._kw())

    def irfft2(self, a, s):
        """Inverse of :meth:`rfft2`; ``s`` is the real output shape of the last two axes."""
        return self._fft.irfft2(a, s=s, axes=(-2, -1), **self._kw())

    @property
    def ndimage(self) -> ModuleType:
        """``scipy.ndimage`` on CPU, ``cupyx.scipy.ndimage`` on GPU (same functions)."""
        if self.name == "gpu":
            import cupyx.scipy.ndimage

            return cupyx.scipy.ndimage
        import scipy.ndimage

        return scipy.ndimage

    def asarray(self, a, dtype=None):
        """Move/convert ``a`` to this backend's array type (no copy when already there)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a):
        """Return ``a`` as a numpy array (copies from the GPU when needed)."""
        if self.name == "gpu":
            return self.xp.asnumpy(a)
        import numpy

        return numpy.asarray(a)

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU); for honest timings."""
        if self.name == "gpu":
            self.xp.cuda.Device().synchronize()


class DeviceUnavailable(RuntimeError):
    """The GPU was asked for and none is usable here; the message says why (:func:`gpu_probe`)."""


#: Longest reason :func:`gpu_probe` returns (an exception's text can be pages long).
_REASON_CHARS = 300


@functools.lru_cache(maxsize=1)
def gpu_probe() -> str | None:
    """Whether cupy can compute on a GPU here: None when it can, else why not (one line).

    Runs what every GPU path needs, once per process: cupy's import, a CUDA device, one
    compiled element-wise kernel (NVRTC and cupy's kernel cache directory, ``CUPY_CACHE_DIR``:
    a read-only home under systemd fails here) and one FFT (cuFFT), checked against numpy.
    Counting devices alone passes on a machine whose cupy lacks its CUDA libraries, and every
    batch would then fail. Never raises.
    """
    try:
        import cupy
        import cupyx.scipy.fft
        import numpy
    except Exception as exc:  # noqa: BLE001 - any import failure is a reason, not a crash
        return _reason("cupy does not import", exc)
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001
        return _reason("no CUDA device", exc)
    try:
        x = cupy.arange(16, dtype=cupy.float32)
        kernel = cupy.ElementwiseKernel("float32 x", "float32 y", "y = 2 * x + 1", "holostream_probe")
        spectrum = cupy.asnumpy(cupyx.scipy.fft.fft(kernel(x).astype(cupy.complex64)))
    except Exception as exc:  # noqa: BLE001
        return _reason("a CUDA kernel or FFT failed", exc)
    expected = numpy.fft.fft(2 * numpy.arange(16) + 1)
    if not numpy.allclose(spectrum, expected, rtol=1e-4, atol=1e-3):
        return "the GPU's FFT of a test signal differs from numpy's"
    return None


def _reason(what: str, exc: BaseException) -> str:
    text = " ".join(f"{what}: {type(exc).__name__}: {exc}".split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 1] + "…"


def gpu_available() -> bool:
    """True when cupy can compute on a GPU here (:func:`gpu_probe`). Never raises."""
    return gpu_probe() is None


def get_backend(device: str = "cpu", threads: int | None = None) -> Backend:
    """Return the backend for ``device`` ("cpu" or "gpu").

    ``threads`` sets the CPU FFT worker count (default: all cores the process may use).
    Raises :class:`DeviceUnavailable` with the reason when a GPU is asked for and none is usable.
    """
    if device == "cpu":
        import numpy
        import scipy.fft

        n = threads or len(os.sched_getaffinity(0))
        return Backend("cpu", numpy, n, scipy.fft)
    if device == "gpu":
        reason = gpu_probe()
        if reason is not None:
            raise DeviceUnavailable(f"device 'gpu' requested but not usable: {reason}")
        import cupy
        import cupyx.scipy.fft

        return Backend("gpu", cupy, 1, cupyx.scipy.fft)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
