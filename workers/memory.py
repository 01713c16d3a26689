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

#: Padded complex64 arrays alive at once per projection while a chain step runs, as
#: ``(fixed, per distance)``: a step on ``n`` distances holds ``fixed + n · per distance``.
#: Peaks measured with ``tracemalloc`` on the numpy path (256² single distance, 128² at 1, 2
#: and 4 distances: AP 7.5 / 10.5 / 16.5, RAAR 9.5 / 12.5 / 18.5, CTF 2.0 / 3.5 / 6.5, Paganin
#: 2.0 / 2.5 / 3.5), rounded up; ``tests/unit/test_memory.py`` keeps the measured peak under
#: this bound for every step, and the gpu test compares it with cupy's pool.
STEP_WAVES = {
    "paganin": (2.0, 0.5),
    "ctf": (1.0, 1.5),
    "ctf_mixed": (1.5, 1.5),
    "ap": (5.0, 3.0),
    "newton": (5.0, 3.0),
    "raar": (7.0, 3.0),
}
#: The default live chain's (``"ap"``: Paganin, then AP iterations) at one distance.
DEFAULT_WAVES = STEP_WAVES["ap"][0] + STEP_WAVES["ap"][1]
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


def waves_per_projection(step_names, n_distances: int = 1) -> float:
    """Padded complex64 arrays per projection at the peak of a chain (:data:`STEP_WAVES`).

    Parameters
    ----------
    step_names : iterable of str
        The chain's step names in order (``Step.name``); empty for no phase retrieval.
    n_distances : int
        Propagation distances the chain works on at once, >= 1.

    Returns
    -------
    float
        The largest step's count (steps run one after the other); 0 for an empty chain.

    Raises
    ------
    ValueError
        For a step this model does not know, or ``n_distances < 1``.
    """
    if n_distances < 1:
        raise ValueError(f"n_distances must be >= 1, got {n_distances}")
    counts = []
    for name in step_names:
        if name not in STEP_WAVES:
            raise ValueError(f"no memory model for phase step {name!r}; known: {', '.join(STEP_WAVES)}")
        fixed, per_distance = STEP_WAVES[name]
        counts.append(fixed + per_distance * n_distances)
    return max(counts, default=0.0)


def estimate_device_bytes(raw_shape: tuple[int, int], binning: int, angle_binning: int,
                          batch: int = 1, raw_itemsize: int = 2, margin: float = 0.5,
                          ramp_padding_factor: int = 2, volume_width: int | None = None,
                          waves: float = DEFAULT_WAVES, n_distances: int = 1) -> MemoryEstimate:
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
    waves : float
        Padded complex64 arrays per projection at the phase chain's peak
        (:func:`waves_per_projection`; default: the ``"ap"`` chain at one distance).
    n_distances : int
        Propagation distances per angle: raw frames, references and binned intensities are
        held for each.

    Returns
    -------
    MemoryEstimate
    """
    rows, cols = raw_shape
    if binning < 1 or angle_binning < 1 or batch < 1:
        raise ValueError("binning, angle_binning and batch must be >= 1")
    if n_distances < 1:
        raise ValueError(f"n_distances must be >= 1, got {n_distances}")
    rows_b, cols_b = rows // binning, cols // binning
    frames = batch * angle_binning * n_distances
    raw = frames * rows * cols * (raw_itemsize + 4)  # the frames and their float32 transmission
    references = 2 * rows * cols * 4 * n_distances
    intensities = batch * rows_b * cols_b * 4 * (n_distances + 1)  # binned intensities and phase
    side_r, side_c = padded_side(rows_b, margin), padded_side(cols_b, margin)
    wave = side_r * side_c * 8
    kernels = wave * n_distances if waves else 0  # one Fresnel kernel per distance
    phasing = int(batch * wave * (waves + FFT_WORKSPACE_FACTOR) + kernels) if waves else 0
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
              volume_width: int | None = None, step_names=("paganin", "ap"), n_distances: int = 1) -> None:
        """Raise ``MemoryError`` with the reason when a scan of this geometry cannot fit.

        ``volume_width``: the volume's binned ``x``/``y`` size when it is not the detector's
        (a 360° offset-axis scan); ``step_names``: the scan's phase chain (``Step.name`` of
        each step); ``n_distances``: propagation distances per angle.
        """
        if self.available_bytes <= 0:
            return
        estimate = estimate_device_bytes(raw_shape, binning, angle_binning, self.batch, raw_itemsize,
                                         volume_width=volume_width,
                                         waves=waves_per_projection(step_names, n_distances),
                                         n_distances=n_distances)
        check_fits(estimate, self.available_bytes, copies=self.copies)
