"""Reconstruction settings: one validated, immutable object shared by every process.

The same key names are used in the TOML ``[reconstruction]`` table, in the per-scan
``scan_start.reconstruction`` overrides of the wire protocol, in the control ``set``
command and as command-line options. Validation happens once, here, at the door; an
invalid key or value raises :class:`SettingsError` naming the key.

The phase-retrieval chain text (``"paganin, ap**8(delta_beta=200), ap**2"``) is checked
only for its syntax here, since ``shared`` may not import the workers; the worker's
parser checks step names and parameters fully.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

PHASE_METHODS = ("none", "paganin", "ctf", "ap", "raar")
FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann")
PAD_MODES = ("edge", "reflect")
DEVICES = ("cpu", "gpu")
#: Ring filters (``workers/ring.py`` RING_FILTERS; a unit test keeps both equal).
RING_FILTERS = ("none", "sorting", "column-mean")

# Limits that catch typos and absurd requests, not physics.
_MAX_BINNING = 64
_MAX_ANGLE_BINNING = 10_000
_MAX_ITERATIONS = 100_000
_MAX_PUBLISH_INTERVAL_S = 86_400.0

# The chain grammar, whole: steps ``name[**count][(key=value, ...)]`` separated by commas.
# Only the syntax is checked here (shared/ knows no step names); the worker's
# ``phasing.parse_chain`` checks names and parameters.
_KEY_VALUE = r"[a-z_][a-z0-9_]*\s*=\s*[^=,()\s][^=,()]*"
_STEP = rf"[a-z][a-z0-9_-]*(?:\s*\*\*\s*[1-9][0-9]*)?(?:\s*\(\s*(?:{_KEY_VALUE}(?:\s*,\s*{_KEY_VALUE})*)?\s*\))?"
_CHAIN = re.compile(rf"\s*{_STEP}(?:\s*,\s*{_STEP})*\s*")


class SettingsError(ValueError):
    """An invalid reconstruction setting.

    Attributes
    ----------
    key : str
        The offending key (as written by the user).
    reason : str
        What is wrong with it.
    """

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"setting {key!r}: {reason}")


def check_chain_syntax(text: str) -> None:
    """Check that ``text`` reads as a phase chain; raise ``ValueError`` with the reason."""
    if not _CHAIN.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a chain of steps name[**count][(key=value, ...)] separated by commas "
            "(counts >= 1, no empty steps)"
        )


def _integer(key: str, value: Any, low: int, high: int) -> int:
    # bool is an int subclass; "binning = true" is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(key, f"must be an integer, got {value!r} ({type(value).__name__})")
    if not low <= value <= high:
        raise SettingsError(key, f"must be between {low} and {high}, got {value}")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(key, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _phase(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise SettingsError(key, f"must be a method name or a chain text, got {value!r}")
    text = value.strip()
    if text in PHASE_METHODS:
        return text
    if "," not in text and "(" not in text and "*" not in text:
        raise SettingsError(
            key, f"unknown method {text!r}; use one of {', '.join(PHASE_METHODS)} or a chain"
        )
    try:
        check_chain_syntax(text)
    except ValueError as err:
        raise SettingsError(key, f"invalid chain {text!r}: {err}") from None
    return text


def _interval(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingsError(key, f"must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 < value <= _MAX_PUBLISH_INTERVAL_S:
        raise SettingsError(key, f"must be > 0 and <= {_MAX_PUBLISH_INTERVAL_S:g} s, got {value}")
    return value


_VALIDATORS = {
    "binning": lambda k, v: _integer(k, v, 1, _MAX_BINNING),
    "angle_binning": lambda k, v: _integer(k, v, 1, _MAX_ANGLE_BINNING),
    "phase": _phase,
    "iterations": lambda k, v: _integer(k, v, 0, _MAX_ITERATIONS),
    "filter": lambda k, v: _choice(k, v, FILTERS),
    "publish_interval_s": _interval,
    "pad_mode": lambda k, v: _choice(k, v, PAD_MODES),
    "device": lambda k, v: _choice(k, v, DEVICES),
    "ring_filter": lambda k, v: _choice(k, v, RING_FILTERS),
}


@dataclass(frozen=True)
class ReconstructionSettings:
    """How to reconstruct a scan; immutable and validated when made (``SettingsError``).

    Attributes
    ----------
    binning : int
        Pixel binning b×b of the detector frames (voxel size = b × pixel size).
    angle_binning : int
        Number of consecutive projections averaged into one.
    phase : str
        ``"none"``, ``"paganin"``, ``"ctf"``, ``"ap"``, ``"raar"`` or a chain text.
    iterations : int
        Iterations of ``"ap"``/``"raar"`` after their Paganin start.
    filter : str
        FBP window: ``"ram-lak"``, ``"shepp-logan"``, ``"cosine"``, ``"hann"``.
    publish_interval_s : float
        Seconds between live volumes of a scan.
    pad_mode : str
        Padding of projections before Fourier filtering: ``"edge"`` or ``"reflect"``.
    device : str
        ``"cpu"`` or ``"gpu"``.
    ring_filter : str
        Stripe (ring) removal on the sinograms: ``"none"``, ``"sorting"`` (Vo et al.; whole
        sinograms, offline only) or ``"column-mean"`` (a running mean over the angles; offline
        and live). Off by default: measured to help where phase retrieval keeps fine detail,
        and not after a strong Paganin low-pass (``workers/ring.py``).
    """

    binning: int = 1
    angle_binning: int = 1
    phase: str = "paganin"
    iterations: int = 10
    filter: str = "ram-lak"
    publish_interval_s: float = 2.0
    pad_mode: str = "edge"
    device: str = "cpu"
    ring_filter: str = "none"

    def __post_init__(self):
        # Direct construction is validated too, so no invalid instance can exist.
        for name, check in _VALIDATORS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The setting names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], base: ReconstructionSettings | None = None
    ) -> ReconstructionSettings:
        """Build validated settings from ``d``, taking missing keys from ``base``.

        Parameters
        ----------
        d : mapping of str to value
            Setting names to values (TOML table, JSON object, CLI options). Hyphens in
            keys are accepted for underscores (``angle-binning``).
        base : ReconstructionSettings, optional
            Values for keys absent from ``d`` (default: the defaults).

        Raises
        ------
        SettingsError
            Naming the first unknown key or invalid value.
        """
        if not isinstance(d, Mapping):
            raise SettingsError("reconstruction", f"must be a table/object, got {type(d).__name__}")
        values = (base or cls()).to_dict()
        for raw_key, value in d.items():
            key = str(raw_key).replace("-", "_")
            if key not in _VALIDATORS:
                raise SettingsError(
                    str(raw_key), f"unknown setting; known settings: {', '.join(cls.keys())}"
                )
            values[key] = _VALIDATORS[key](str(raw_key), value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all settings (JSON/TOML friendly)."""
        return asdict(self)

    def merged(self, overrides: Mapping[str, Any]) -> ReconstructionSettings:
        """Return a copy with ``overrides`` applied and validated (``self`` is unchanged)."""
        return type(self).from_dict(overrides, base=self)
