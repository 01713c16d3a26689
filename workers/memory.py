"""Device-memory estimate of one scan's reconstruction, before any frame arrives.

The live service must refuse a scan whose reconstruction cannot fit on the GPU with the
reason, at ``scan_start``, rather than fail half-way. The estimate follows what the plan
objects allocate: raw frames of a batch of angle groups, dark and flat, binned intensities,
the padded complex64 waves of the phasing loop (wave, propagated wave, Fresnel kernel and
FFT work space), ramp-filter work space and the float32 volume accumulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .padding import smooth_size

#: complex64 arrays of the padded grid alive at once per projection in AP/RAAR (object wave,
#: detector wave, RAAR's previous iterate, FFT work space).
WAVES_PER_PROJECTION = 4
#: cuFFT/VkFFT plans need work space of the order of one batch of the transformed arrays.
FFT_WORKSPACE_FACTOR = 1.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed on the device, by part (all ints, bytes)."""

    raw_frames: int
    references: int
    intensities: int
    phasing: int
    filtering: int
    volume: int

    @property
    def total(self) -> int:
        """Sum of all parts, bytes."""
        return (self.raw_frames + self.references + self.intensities + self.phasing
                + self.filtering + self.volume)

    def describe(self) -> str:
        """One line, GB per part, for a refusal message."""
        parts = ", ".join(f"{name} {getattr(self, name) / 1e9:.2f}" for name in
                          ("raw_frames", "references", "intensities", "phasing", "filtering", "volume"))
        return f"{self.total / 1e9:.2f} GB ({parts} GB)"


def padded_side(n: int, margin: float = 0.5) -> int:
    """Padded length of the phase-retrieval grid for ``n`` pixels (as ``padding.Padding``)."""
    return smooth_size(n + 2 * math.ceil(margin * n / 2))


def estimate_device_bytes(raw_shape: tuple[int, int], binning: int, angle_binning: int,
                          batch: int = 1, raw_itemsize: int = 2, margin: float = 0.5,
                          ramp_padding_factor: int = 2, volume_width: int | None = None) -> MemoryEstimate:
    """Estimate the device memory of reconstructing one scan.

    Parameters
    ----------
    raw_shape : tuple of int
        ``(rows, cols)`` of the detector frames.
    binning, angle_binning : int
        Pixel and angle binning.
    batch : int
        Angle groups processed together in one call.
    raw_itemsize : int
        Bytes per raw pixel (2 for uint16); flat-field works in float32 on top of it.
    margin : float
        Padding fraction of the phase retrieval.
    ramp_padding_factor : int
        Zero-padding factor of the ramp filter.
    volume_width : int, optional
        Voxels along ``x`` and ``y`` of the volume (binned); default the binned detector
        width. A 360° offset-axis scan's disc is nearly twice it (``workers/halfacq.py``
        ``volume_width``): four times the volume.

    Returns
    -------
    MemoryEstimate
    """
    rows, cols = raw_shape
    if binning < 1 or angle_binning < 1 or batch < 1:
        raise ValueError("binning, angle_binning and batch must be >= 1")
    rows_b, cols_b = rows // binning, cols // binning
    frames = batch * angle_binning
    raw = frames * rows * cols * (raw_itemsize + 4)  # the frames and their float32 transmission
    references = 2 * rows * cols * 4
    intensities = batch * rows_b * cols_b * 4 * 2  # binned intensity and phase
    side_r, side_c = padded_side(rows_b, margin), padded_side(cols_b, margin)
    wave = side_r * side_c * 8
    phasing = int(batch * wave * (WAVES_PER_PROJECTION + FFT_WORKSPACE_FACTOR) + wave)  # + kernel
    ramp_cols = smooth_size(ramp_padding_factor * cols_b)
    filtering = batch * rows_b * (ramp_cols * 4 + (ramp_cols // 2 + 1) * 8)
    n = cols_b if volume_width is None else int(volume_width)
    volume = rows_b * n * n * 4
    return MemoryEstimate(raw, references, intensities, phasing, filtering, volume)


def check_fits(estimate: MemoryEstimate, available_bytes: int, reserve: float = 0.1,
               copies: int = 1) -> None:
    """Raise ``MemoryError`` with the reason when ``copies`` × ``estimate`` exceed the usable memory.

    ``reserve`` is the fraction of ``available_bytes`` kept free for the CUDA context,
    plan caches and fragmentation.
    """
    usable = int(available_bytes * (1.0 - reserve))
    if copies * estimate.total > usable:
        times = f"{copies} × " if copies > 1 else ""
        raise MemoryError(f"needs {times}{estimate.describe()}, but only {usable / 1e9:.2f} GB of the device's "
                          f"{available_bytes / 1e9:.2f} GB are usable")


@dataclass(frozen=True)
class DeviceBudget:
    """The device memory one scan may use, and how the service spends it.

    Attributes
    ----------
    available_bytes : int
        Memory of the device (or the share of it granted to the service); 0 disables checks.
    batch : int
        Angle groups processed per call by one device process.
    copies : int
        Device processes that each hold a whole pipeline and volume (pool mode on a GPU:
        the worker count; split mode: 1).
    """

    available_bytes: int = 0
    batch: int = 1
    copies: int = 1

    def check(self, raw_shape: tuple[int, int], raw_itemsize: int, binning: int, angle_binning: int,
              volume_width: int | None = None) -> None:
        """Raise ``MemoryError`` with the reason when a scan of this geometry cannot fit.

        ``volume_width``: the volume's binned ``x``/``y`` size when it is not the detector's
        (a 360° offset-axis scan).
        """
        if self.available_bytes <= 0:
            return
        estimate = estimate_device_bytes(raw_shape, binning, angle_binning, self.batch, raw_itemsize,
                                         volume_width=volume_width)
        check_fits(estimate, self.available_bytes, copies=self.copies)
