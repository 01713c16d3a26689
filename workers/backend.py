"""Array namespace and FFTs, chosen once: numpy + scipy.fft on CPU, cupy on GPU.

Every plan object in ``workers`` takes a :class:`Backend` and uses ``backend.xp`` for
array creation and the backend's FFT methods, so one algorithm serves both devices.
cupy is imported only when a GPU backend is asked for.
"""

from __future__ import annotations

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


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device. Never raises."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
        return False


def get_backend(device: str = "cpu", threads: int | None = None) -> Backend:
    """Return the backend for ``device`` ("cpu" or "gpu").

    ``threads`` sets the CPU FFT worker count (default: all cores the process may use).
    Raises ``RuntimeError`` with the reason when a GPU is asked for and none is usable.
    """
    if device == "cpu":
        import numpy
        import scipy.fft

        n = threads or len(os.sched_getaffinity(0))
        return Backend("cpu", numpy, n, scipy.fft)
    if device == "gpu":
        if not gpu_available():
            raise RuntimeError("device 'gpu' requested but cupy finds no CUDA device")
        import cupy
        import cupyx.scipy.fft

        return Backend("gpu", cupy, 1, cupyx.scipy.fft)
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
