"""Change the FBP window of projections that are already ramp-filtered.

The live service keeps its projections ramp-filtered (what the workers back-project, and
what a re-centring re-uses), not the δ px projections before the filter. Changing the
window afterwards (``ram-lak`` → ``hann`` …) multiplies each row's spectrum by the ratio of
the two windows, on the same padded grid as :class:`~holostream.workers.fbp.RampFilter`:

    q_new = F⁻¹[ (W_new / W_old) · F(q_old) ]

What this cannot do, and what it costs (``tests/unit/test_refilter.py``):

- only the detector columns of ``q_old`` are known: the ramp-filtered padding outside them
  (the ramp's tails, small for a sample inside the field of view) is taken as 0. Inside the
  field of view the volume differs from filtering the unfiltered projections with the new
  window by ≤ 2·10⁻⁴ of its largest value (measured for every accepted change, 128², 180
  angles);
- a frequency the old window removed cannot be brought back: ``hann`` and ``cosine`` vanish
  at the Nyquist frequency, and dividing by them near it amplifies the truncation error
  (hann → ram-lak: 9 % rms error). A change whose gain ``W_new / W_old`` exceeds
  :data:`MAX_GAIN` anywhere is refused with that reason. The ramp (``ram-lak``, W = 1)
  allows every change; so does ``shepp-logan`` (gain ≤ 1.57).
"""

from __future__ import annotations

import math

import numpy as np

from holostream.workers.backend import Backend
from holostream.workers.fbp import WINDOWS
from holostream.workers.padding import smooth_size

#: Window values below this are taken as 0.
_SMALLEST_WINDOW = 1e-3
#: Largest amplification of a frequency a change may need (shepp-logan → ram-lak: 1.57).
MAX_GAIN = 2.0


class WindowChange:
    """Re-filter ramp-filtered rows from one window to another, planned once per width.

    Parameters
    ----------
    n_cols : int
        Detector width (pixels) of the filtered projections.
    backend : Backend
        Array namespace and FFTs.
    from_window, to_window : str
        Windows of :data:`holostream.workers.fbp.WINDOWS` (``ram-lak``, ``shepp-logan``,
        ``cosine``, ``hann``): the one the projections were filtered with, and the one wanted.
    padding_factor : float
        As :class:`~holostream.workers.fbp.RampFilter` (the same grid, so the same frequencies).

    Raises
    ------
    ValueError
        For an unknown window, or a change that would need a gain over :data:`MAX_GAIN`
        (frequencies the old window removed or nearly removed).
    """

    def __init__(self, n_cols: int, backend: Backend, from_window: str, to_window: str,
                 padding_factor: float = 2):
        for window in (from_window, to_window):
            if window not in WINDOWS:
                raise ValueError(f"unknown FBP window {window!r}; expected one of {sorted(WINDOWS)}")
        if n_cols < 1:
            raise ValueError(f"WindowChange needs n_cols >= 1, got {n_cols}")
        self.backend = backend
        self.n_cols = int(n_cols)
        self.from_window, self.to_window = from_window, to_window
        self.n_pad = smooth_size(math.ceil(padding_factor * self.n_cols))
        self.left = (self.n_pad - self.n_cols) // 2
        freq = np.fft.rfftfreq(self.n_pad)
        old, new = WINDOWS[from_window](freq), WINDOWS[to_window](freq)
        wanted = np.abs(new) > _SMALLEST_WINDOW  # where the new window keeps something
        gain = np.abs(new[wanted]) / np.maximum(np.abs(old[wanted]), 1e-12)
        if gain.size and gain.max() > MAX_GAIN:
            raise ValueError(
                f"the projections were filtered with {from_window!r}, which (nearly) removes frequencies "
                f"that {to_window!r} keeps: they cannot be recovered (gain {gain.max():.3g} > {MAX_GAIN}); "
                f"set filter={to_window} for the next scan instead")
        ratio = np.where(wanted, new / np.where(wanted, old, 1.0), 0.0)
        self.ratio = backend.asarray(ratio, dtype=backend.xp.float32)

    @property
    def identity(self) -> bool:
        """True when nothing changes (the same window)."""
        return self.from_window == self.to_window

    def __call__(self, filtered):
        """The projections as if ramp-filtered with ``to_window``.

        Parameters
        ----------
        filtered : array of shape (..., rows, n_cols), float32
            Projections ramp-filtered with ``from_window`` (δ px per pixel).

        Returns
        -------
        array of shape (..., rows, n_cols), float32
        """
        xp = self.backend.xp
        filtered = xp.asarray(filtered, dtype=xp.float32)
        if self.identity:
            return filtered
        if filtered.shape[-1] != self.n_cols:
            raise ValueError(f"projection width: expected {self.n_cols}, got {filtered.shape[-1]}")
        right = self.n_pad - self.n_cols - self.left
        padded = xp.pad(filtered, [(0, 0)] * (filtered.ndim - 1) + [(self.left, right)], mode="constant")
        spectrum = self.backend.rfft(padded)
        spectrum *= self.ratio
        out = self.backend.irfft(spectrum, n=self.n_pad)
        return xp.ascontiguousarray(out[..., self.left : self.left + self.n_cols], dtype=xp.float32)
