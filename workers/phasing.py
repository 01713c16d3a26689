"""Phase-retrieval chains: a start (Paganin or CTF), then Newton / AP / RAAR iterations.

A chain is data, written like PyNX operator chains read right to left, but in the order
they run: ``"paganin, ap**8(delta_beta=200), ap**2"`` means a Paganin start, 8
alternating-projection iterations with the homogeneous (δ/β) object constraint, then 2
with the amplitude ≤ 1 constraint only. :func:`parse_chain` / :func:`format_chain`
convert text ↔ ``tuple[Step, ...]``; :class:`PhaseRetrieval` runs a chain.

Iterations work on the padded grid with the object wave ``ψ = exp(-B + iφ)``:

- detector projection ``P_d``: propagate, replace the modulus by ``sqrt(I_measured)``
  keeping the phase, propagate back. The measured modulus in the padding margin is the
  square root of the padded intensity (edge padding continues the border pixels), i.e.
  the margin is treated as measured data, like the start filters treat it.
- object projection ``P_o``: with ``delta_beta`` the modulus is set from the phase,
  ``|ψ| = exp((β/δ)φ)`` (``B = -(β/δ)φ``), clipped ≤ 1; without it ``|ψ|`` is clipped ≤ 1.
  ``phase_max`` / ``phase_min`` clip φ (``phase_max=0``: δ ≥ 0).
- AP: ``ψ ← P_o P_d ψ``. RAAR (``beta``, default 0.75):
  ``ψ ← β (ψ + P_o(2 P_d ψ − ψ)) + (1 − 2β) P_d ψ``.
- ``newton**k``: up to k quasi-Newton steps on the homogeneous-object model
  ``ψ = exp((i + β/δ)φ)``, ``φ ← φ + CTF⁻¹_α[mask · (I − |Dψ|²)]`` with the mask 1 on the
  measured pixels only, keeping per projection the iterate of smallest residual
  (:class:`workers.ctf.NewtonRefinement`). ``delta_beta`` defaults to the retrieval's δ/β,
  ``alpha_high`` to ``NEWTON_ALPHA_HIGH``, ``alpha_low`` to the CTF's. Later AP / RAAR steps
  continue from ``ψ = min(exp(φ/(δ/β)), 1) · exp(iφ)``.

``ctf_mixed`` (δ and β independent) is a start for several distances only; the chains of
several distances run in :mod:`workers.multiphasing`, which reuses :func:`object_projection`.

The phase is tracked as a real, unwrapped array: a new wave ``w`` gets
``φ_w = φ + angle(w · conj(ψ))`` relative to the current ``(ψ, φ)``, so thick samples
with |φ| ≫ π never wrap as long as one iteration changes φ by less than π. The result
is the phase of the last iterate, cropped to the input shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .ctf import CTF, NewtonRefinement
from .fresnel import FresnelPropagator
from .paganin import MIN_INTENSITY, Paganin
from .padding import Padding

START_STEPS = ("paganin", "ctf", "ctf_mixed")
#: Start steps that need images at several distances (workers/multiphasing.py).
MULTI_DISTANCE_STEPS = ("ctf_mixed",)
ITERATION_STEPS = ("ap", "raar", "newton")
#: Parameters each step accepts (all numbers).
STEP_PARAMS = {
    "paganin": ("delta_beta",),
    "ctf": ("delta_beta", "alpha_low", "alpha_high"),
    "ctf_mixed": ("delta_beta", "alpha_low", "alpha_high", "alpha_mix"),
    "ap": ("delta_beta", "phase_min", "phase_max"),
    "raar": ("beta", "delta_beta", "phase_min", "phase_max"),
    "newton": ("delta_beta", "alpha_low", "alpha_high"),
}
#: Allowed values of each parameter: (test, what it must be).
_PARAM_RANGES = {
    "delta_beta": (lambda v: v > 0, "> 0"),
    "alpha_low": (lambda v: v >= 0, ">= 0"),
    "alpha_high": (lambda v: v > 0, "> 0"),
    "alpha_mix": (lambda v: v >= 0, ">= 0"),
    "beta": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "phase_min": (math.isfinite, "finite"),
    "phase_max": (math.isfinite, "finite"),
}
RAAR_BETA = 0.75
#: CTF regularisation above the first maximum of the ``newton`` step (gain ≤ 0.14 at the
#: CTF zeros): the best of 0.3, 1, 3 and 10 on service/bench/phase.py's phantoms.
NEWTON_ALPHA_HIGH = 3.0
#: The chain recommended for thick, near-homogeneous samples, at the cost of ``ap`` with 10
#: iterations (docs/phase-retrieval.md); ``delta_beta`` of the ``ap`` steps is the sample's.
RECOMMENDED_CHAIN = "paganin, newton**5(alpha_high=3), ap**5(delta_beta=200)"

_TOKEN = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\*\*\s*(\d+)\s*)?(?:\((.*)\))?\s*$", re.DOTALL)


@dataclass(frozen=True)
class Step:
    """One operator of a chain: ``name`` applied ``count`` times with ``params``.

    Parameters
    ----------
    name : {"paganin", "ctf", "ap", "raar", "newton"}
    count : int
        Repetitions, ≥ 1 (1 for start steps).
    params : tuple of (str, float)
        Keyword parameters; stored sorted by key, so equal steps compare equal.

    Raises
    ------
    ValueError
        Unknown name or parameter, a count < 1 (or > 1 for a start step), a value out of
        range (``delta_beta``, ``alpha_high`` > 0, ``alpha_low`` ≥ 0, ``beta`` in (0, 1], all
        finite) or ``phase_min > phase_max``.
    """

    name: str
    count: int = 1
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if self.name not in STEP_PARAMS:
            raise ValueError(f"unknown step {self.name!r}; known: {', '.join(STEP_PARAMS)}")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"step {self.name!r}: count must be an integer >= 1, got {self.count!r}")
        if self.name in START_STEPS and self.count != 1:
            raise ValueError(f"start step {self.name!r} cannot be repeated (count {self.count})")
        params = dict(self.params)
        for key in params:
            if key not in STEP_PARAMS[self.name]:
                raise ValueError(
                    f"step {self.name!r} has no parameter {key!r}; "
                    f"accepted: {', '.join(STEP_PARAMS[self.name])}"
                )
        values = {key: float(value) for key, value in params.items()}
        for key, value in values.items():
            test, allowed = _PARAM_RANGES[key]
            if not (math.isfinite(value) and test(value)):
                raise ValueError(f"step {self.name!r}: {key} must be {allowed}, got {value!r}")
        if values.get("phase_min", -math.inf) > values.get("phase_max", math.inf):
            raise ValueError(f"step {self.name!r}: phase_min {values['phase_min']!r} > "
                             f"phase_max {values['phase_max']!r}")
        object.__setattr__(self, "params", tuple(sorted(values.items())))

    def param(self, key: str, default: float | None = None) -> float | None:
        """Value of parameter ``key``, or ``default`` when the step does not set it."""
        return dict(self.params).get(key, default)


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in chain {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '(' in chain {text!r}")
    return parts + [text[start:]]


def _parse_step(token: str) -> Step:
    match = _TOKEN.match(token)
    if not match:
        raise ValueError(f"bad chain token {token.strip()!r}: expected name[**count][(key=value, ...)]")
    name, count, body = match.group(1).lower(), match.group(2), match.group(3)
    params = {}
    for item in body.split(",") if body and body.strip() else ():
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            params[key.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"bad parameter {item.strip()!r} in chain token {token.strip()!r}: expected key=number"
            ) from None
    try:
        return Step(name, int(count) if count is not None else 1, tuple(params.items()))
    except ValueError as error:
        raise ValueError(f"bad chain token {token.strip()!r}: {error}") from None


def _check_order(steps: tuple[Step, ...]) -> None:
    if not steps:
        return
    if steps[0].name not in START_STEPS:
        raise ValueError(f"a chain starts with one of {START_STEPS}, got {steps[0].name!r}")
    for step in steps[1:]:
        if step.name not in ITERATION_STEPS:
            raise ValueError(f"step {step.name!r} may only start a chain")


def parse_chain(text: str) -> tuple[Step, ...]:
    """Steps of a chain written as text, e.g. ``"ctf, raar**20(beta=0.8), ap**5"``.

    Raises
    ------
    ValueError
        Naming the bad token: unknown step or parameter, bad count or number, a chain that
        does not start with ``paganin`` or ``ctf``, or a start step later in the chain.
    """
    if not text.strip():
        raise ValueError("empty phase-retrieval chain")
    steps = tuple(_parse_step(token) for token in _split_top_level(text))
    _check_order(steps)
    return steps


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def format_chain(steps: tuple[Step, ...]) -> str:
    """Text of a chain; ``parse_chain(format_chain(steps)) == steps``."""
    parts = []
    for step in steps:
        text = step.name if step.count == 1 else f"{step.name}**{step.count}"
        if step.params:
            text += "(" + ", ".join(f"{k}={_format_number(v)}" for k, v in step.params) + ")"
        parts.append(text)
    return ", ".join(parts)


def default_chain(phase: str, iterations: int, delta_beta: float) -> tuple[Step, ...]:
    """The chain for the contract's ``phase`` setting.

    ``"none"`` → ``()``; ``"paganin"`` / ``"ctf"`` → that start alone; ``"ap"`` / ``"raar"``
    → Paganin start, then ``iterations - round(iterations / 5)`` iterations with the δ/β
    constraint and ``round(iterations / 5)`` without (10 → 8 + 2); anything else is
    parsed with :func:`parse_chain`.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if phase == "none":
        return ()
    if phase in START_STEPS:
        return (Step(phase),)
    if phase in ("ap", "raar"):
        free = round(iterations / 5)
        steps = [Step("paganin")]
        if iterations - free:
            steps.append(Step(phase, iterations - free, (("delta_beta", delta_beta),)))
        if free:
            steps.append(Step(phase, free))
        return tuple(steps)
    return parse_chain(phase)


def recommended_chain(delta_beta: float) -> str:
    """:data:`RECOMMENDED_CHAIN` for a sample of δ/β ``delta_beta`` (the ``ap`` constraint's)."""
    *head, last = parse_chain(RECOMMENDED_CHAIN)
    return format_chain((*head, Step(last.name, last.count, (("delta_beta", delta_beta),))))


class PhaseRetrieval:
    """Run a chain on flat-corrected intensities; padding, filters, propagator set up once.

    Parameters
    ----------
    chain : tuple of Step, or str
        Steps (or their text); ``()`` means no phase retrieval: φ = (δ/β)/2 · ln I.
    shape : tuple of int
        ``(rows, cols)`` of the input images.
    pixel_size_m, distance_m, energy_kev : float
        Pixel size (m), effective sample–detector distance (m), photon energy (keV).
    delta_beta : float
        δ/β of the start and of ``newton`` steps unless they set ``delta_beta``
        (``ap`` / ``raar`` use the δ/β constraint only when they set it).
    backend : Backend
    pad_mode : {"edge", "reflect", "constant1"}
    margin : float
        See :class:`workers.padding.Padding`.
    """

    def __init__(
        self,
        chain,
        shape,
        pixel_size_m: float,
        distance_m: float,
        energy_kev: float,
        delta_beta: float,
        backend,
        pad_mode: str = "edge",
        margin: float = 0.5,
    ):
        self.chain = parse_chain(chain) if isinstance(chain, str) else tuple(chain)
        _check_order(self.chain)
        if self.chain and self.chain[0].name in MULTI_DISTANCE_STEPS:
            raise ValueError(f"step {self.chain[0].name!r} needs images at several distances "
                             "(workers/multiphasing.py)")
        if not delta_beta > 0:
            raise ValueError(f"delta_beta must be > 0, got {delta_beta!r}")
        self.backend = backend
        self.delta_beta = float(delta_beta)
        self.padding = Padding(shape, backend, mode=pad_mode, margin=margin)
        geometry = (shape, pixel_size_m, distance_m, energy_kev)
        self._start = None
        self._propagator = None
        if self.chain:
            start = self.chain[0]
            self._start_delta_beta = start.param("delta_beta", self.delta_beta)
            if start.name == "paganin":
                self._start = Paganin(*geometry, self._start_delta_beta, backend, pad_mode, margin)
            else:
                alphas = {k: v for k, v in start.params if k.startswith("alpha")}
                self._start = CTF(*geometry, self._start_delta_beta, backend, pad_mode,
                                  margin=margin, **alphas)
        self._newton = {}
        if len(self.chain) > 1:
            self._propagator = FresnelPropagator(
                self.padding.padded_shape, pixel_size_m, distance_m, energy_kev, backend
            )
            region = tuple(slice(o, o + n) for o, n in zip(self.padding.offset, self.padding.shape))
            for step in self.chain[1:]:
                if step.name == "newton" and step.params not in self._newton:
                    alphas = {"alpha_high": NEWTON_ALPHA_HIGH,
                              **{k: v for k, v in step.params if k.startswith("alpha")}}
                    self._newton[step.params] = NewtonRefinement(
                        self._propagator, region, step.param("delta_beta", self.delta_beta), **alphas)

    def __call__(self, intensity):
        """Phase of flat-corrected intensity.

        Parameters
        ----------
        intensity : ndarray of shape (rows, cols) or (batch, rows, cols), float32
            ≈ 1 where there is no object; on this backend.

        Returns
        -------
        ndarray, float32, same shape as ``intensity``
            Phase φ in radians (negative in matter).
        """
        xp = self.backend.xp
        intensity = intensity.astype(np.float32, copy=False)
        if self._start is None:
            phase = xp.log(xp.maximum(intensity, np.float32(MIN_INTENSITY)))
            phase *= np.float32(0.5 * self.delta_beta)
            return phase
        padded = self.padding.pad(intensity)
        phase = self._start.phase_padded(padded)
        if self._propagator is not None:
            phase = self._iterate(padded, phase)
        return self.padding.crop(phase).copy()

    def _iterate(self, padded_intensity, phase):
        xp = self.backend.xp
        measured = xp.sqrt(xp.maximum(padded_intensity, np.float32(0)))
        psi, delta_beta = None, self._start_delta_beta
        for step in self.chain[1:]:
            if step.name == "newton":
                phase = self._newton[step.params](padded_intensity, phase, step.count)
                psi, delta_beta = None, step.param("delta_beta", self.delta_beta)
                continue
            if psi is None:
                modulus = xp.minimum(xp.exp(phase / np.float32(delta_beta)), np.float32(1))
                psi = polar(modulus, phase, xp)
            beta = np.float32(step.param("beta", RAAR_BETA))
            for _ in range(step.count):
                detector = self._detector_projection(psi, measured)
                if step.name == "ap":
                    psi, phase = self._object_projection(detector, psi, phase, step)
                else:
                    reflected = detector * np.float32(2) - psi
                    obj, _ = self._object_projection(reflected, psi, phase, step)
                    new = (psi + obj) * beta + detector * (np.float32(1) - 2 * beta)
                    phase = phase + xp.angle(new * xp.conj(psi))
                    psi = new
        return phase

    def _detector_projection(self, psi, measured):
        """Replace the detector-plane modulus of ``psi`` by ``measured``; back in object plane."""
        xp = self.backend.xp
        wave = self._propagator.forward(psi)
        wave *= measured / xp.maximum(xp.abs(wave), np.float32(1e-12))
        return self._propagator.backward(wave)

    def _object_projection(self, wave, psi, phase, step: Step):
        """Apply the object constraint to ``wave``; returns (new ψ, its unwrapped phase)."""
        return object_projection(wave, psi, phase, step, self.backend.xp)


def object_projection(wave, psi, phase, step: Step, xp):
    """Apply the object constraint of ``step`` to ``wave``; returns (new ψ, its unwrapped phase).

    ``(psi, phase)`` is the current iterate that unwraps the phase of ``wave`` (module doc);
    arrays of shape (..., rows, cols), complex64 / float32, in the namespace ``xp``.
    """
    new_phase = phase + xp.angle(wave * xp.conj(psi))
    phase_min, phase_max = step.param("phase_min"), step.param("phase_max")
    if phase_min is not None:
        new_phase = xp.maximum(new_phase, np.float32(phase_min))
    if phase_max is not None:
        new_phase = xp.minimum(new_phase, np.float32(phase_max))
    delta_beta = step.param("delta_beta")
    if delta_beta is None:
        modulus = xp.minimum(xp.abs(wave), np.float32(1))
    else:
        modulus = xp.minimum(xp.exp(new_phase / np.float32(delta_beta)), np.float32(1))
    return polar(modulus, new_phase, xp), new_phase


def polar(modulus, phase, xp):
    """complex64 ``modulus · exp(i·phase)`` from float32 arrays.

    Built from cos and sin: numpy's complex ``exp`` is about 10× slower.
    """
    return modulus * xp.cos(phase) + (modulus * xp.sin(phase)) * np.complex64(1j)
