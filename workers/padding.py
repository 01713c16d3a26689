"""Padding plans for Fourier-space filters: pad the last two axes to an FFT-friendly shape.

A Fourier filter applied to an unpadded image wraps around: what leaves the right edge
comes back on the left. Every phase-retrieval filter therefore pads its input with a
margin, filters the padded image and crops the result back.

Padded length (one axis of ``n`` pixels, ``margin`` ≥ 0)::

    m = smooth_size(n + 2 * ceil(margin * n / 2))

i.e. ``margin`` is the fraction of ``n`` added in total, half on each side, rounded up
to the next 2·3·5·7-smooth length. ``margin=0.5`` gives ≈ 1.5 n, ``margin=1`` ≈ 2 n (what
nabu uses). The data sit at ``[left : left + n]`` with ``left = (m - n) // 2``, so the
padding is as symmetric as the parity of ``m - n`` allows. The accuracy of margin 0.5 vs
1 for Paganin is measured in ``tests/unit/test_paganin.py``.
"""

from __future__ import annotations

import math

_MODES = ("edge", "reflect", "constant1")


def smooth_size(n: int, primes: tuple[int, ...] = (2, 3, 5, 7)) -> int:
    """Smallest integer ``m ≥ n`` whose prime factors are all in ``primes``.

    Parameters
    ----------
    n : int
        Minimum length, ≥ 1.
    primes : tuple of int
        Allowed prime factors (FFT radices).

    Returns
    -------
    int
    """
    if n < 1:
        raise ValueError(f"smooth_size needs n >= 1, got {n}")
    m = n
    while True:
        rest = m
        for p in primes:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


class Padding:
    """Pad stacks ``(..., rows, cols)`` to a smooth shape and crop them back.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, cols)`` of the unpadded images.
    backend : Backend
        Array namespace the arrays live in.
    mode : {"edge", "reflect", "constant1"}
        ``"edge"`` repeats the border pixels, ``"reflect"`` mirrors without repeating the
        border, ``"constant1"`` fills with 1.0, i.e. with flat (object-free) intensity.
    margin : float
        Total fraction of each axis added as padding before rounding to a smooth size.

    Attributes
    ----------
    shape : tuple of int
        Unpadded ``(rows, cols)``.
    padded_shape : tuple of int
        Padded ``(rows, cols)``.
    offset : tuple of int
        ``(top, left)`` position of the data in the padded image.
    """

    def __init__(self, shape: tuple[int, int], backend, mode: str = "edge", margin: float = 0.5):
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (rows, cols) with positive sizes, got {shape!r}")
        if mode not in _MODES:
            raise ValueError(f"padding mode must be one of {_MODES}, got {mode!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.backend = backend
        self.mode = mode
        self.margin = float(margin)
        self.padded_shape = tuple(
            smooth_size(n + 2 * math.ceil(self.margin * n / 2)) for n in self.shape
        )
        self.offset = tuple((m - n) // 2 for m, n in zip(self.padded_shape, self.shape))
        if mode == "reflect" and any(
            max(o, m - n - o) >= n for o, m, n in zip(self.offset, self.padded_shape, self.shape)
        ):
            raise ValueError(f"reflect padding of {shape} by margin {margin} exceeds the image")
        self._widths = tuple(
            (o, m - n - o) for o, m, n in zip(self.offset, self.padded_shape, self.shape)
        )

    def pad(self, a):
        """Return ``a`` padded on its last two axes.

        Parameters
        ----------
        a : ndarray of shape (..., rows, cols)
            Images on this backend, any real or complex dtype.

        Returns
        -------
        ndarray of shape (..., padded_rows, padded_cols), dtype of ``a``
        """
        self._check(a, self.shape, "pad")
        widths = ((0, 0),) * (a.ndim - 2) + self._widths
        if self.mode == "constant1":
            return self.backend.xp.pad(a, widths, mode="constant", constant_values=1.0)
        return self.backend.xp.pad(a, widths, mode=self.mode)

    def crop(self, a):
        """Return the view of ``a`` where the unpadded data sit.

        Parameters
        ----------
        a : ndarray of shape (..., padded_rows, padded_cols)

        Returns
        -------
        ndarray of shape (..., rows, cols)
            A view (no copy) into ``a``.
        """
        self._check(a, self.padded_shape, "crop")
        (top, left), (rows, cols) = self.offset, self.shape
        return a[..., top : top + rows, left : left + cols]

    @staticmethod
    def _check(a, expected: tuple[int, int], what: str) -> None:
        if a.ndim < 2 or tuple(a.shape[-2:]) != expected:
            raise ValueError(
                f"{what} expects arrays (..., {expected[0]}, {expected[1]}), got shape {a.shape}"
            )
