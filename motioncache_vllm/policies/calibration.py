"""Calibration data: the TeaCache polynomial that maps the relative L1 change of the
timestep modulation e0 to the expected relative change of the model output; MagCache's
magnitude ratios; the measured per-step change of the guided residual (``steperror``).

All are fitted per model (``motioncache calibrate`` fits and stores them beside a model's
weights as ``motioncache_calibration.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

# TeaCache's Wan2.1 T2V 1.3B fit (TeaCache4Wan2.1, also used by FlowCache/MotionCache
# for SkyReels-V2 1.3B), highest power first.
WAN_1_3B_COEFFICIENTS: tuple[float, ...] = (
    -5.21862437e04,
    9.23041404e03,
    -5.28275948e02,
    1.36987616e01,
    -4.99875664e-02,
)
# For a model nobody calibrated: d = relL1 itself. A foreign polynomial is worse than
# none: Wan-1.3B's turns negative (clamped to 0, i.e. "never recompute") above x ~ 0.1.
IDENTITY_COEFFICIENTS: tuple[float, ...] = (1.0, 0.0)
CALIBRATION_FILE = "motioncache_calibration.json"


MagRatios = dict[int, tuple[float, ...]]
"""MagCache magnitude ratios per schedule length (steps per chunk), step by step."""

GuidedChange = dict[int, tuple[float, ...]]
"""Per schedule length: the mean change of the guided residual ``g R_c + (1 - g) R_u`` from
step k-1 to step k under full compute, each chunk's curve scaled to mean 1 (only the shape
is used); entry 0 repeats entry 1 (no change is defined before the first step), so that a
nearest-index resample (:func:`ratios_for`) never reads a zero."""


SkipSensitivity = dict[int, tuple[float, ...]]
"""Per schedule length: the final latent error of skipping step k alone (both CFG branches,
every chunk; full compute otherwise) per unit of that step's first-order latent error
``|sigma_k - sigma_(k+1)| x mean|G_k - G_(k-1)|``, scaled to mean 1 over the steps measured
(only the shape is used); entries before the first measured step repeat it. ``steperror``'s
``second_order="measured"``: how much the later steps (and the solver's history) amplify or
damp an error made at step k."""


class Calibration(NamedTuple):
    """A model's calibration (``load_model_calibration`` / ``model_calibration``)."""

    coefficients: tuple[float, ...]
    fit_range: tuple[float, float] | None = None
    mag_ratios: MagRatios | None = None
    guided_change: GuidedChange | None = None
    skip_sensitivity: SkipSensitivity | None = None


class CalibrationError(ValueError):
    """A calibration file with a field that cannot be used (the message names the file and field)."""


def magnitude_ratios(norms: list[torch.Tensor]) -> list[float]:
    """MagCache's calibration formula over consecutive residuals' per-token norms:
    ``[1, mean(|R_1| / |R_0|), mean(|R_2| / |R_1|), ...]``."""
    return [1.0] + [float((cur / (prev + 1e-8)).mean()) for prev, cur in zip(norms, norms[1:])]


def ratios_for(mag_ratios: MagRatios | GuidedChange, steps: int) -> tuple[float, ...]:
    """Ratios (or any per-step curve stored per schedule length) for a ``steps``-long schedule: the stored one of that length, else the longest
    stored one resampled by nearest index (as diffusers' MagCacheConfig does)."""
    if steps in mag_ratios:
        return mag_ratios[steps]
    source = mag_ratios[max(mag_ratios)]
    if steps == 1:
        return source[-1:]
    scale = (len(source) - 1) / (steps - 1)
    return tuple(source[round(i * scale)] for i in range(steps))


class ResampledRatios:
    """MagCache ratios (or the guided-change curve) looked up step by step (``magcache``,
    ``magrefresh``, ``steperror``): each schedule length is resampled by :func:`ratios_for`
    once, not at every step."""

    def __init__(self, mag_ratios: MagRatios | GuidedChange) -> None:
        self.mag_ratios = mag_ratios
        self._by_length: dict[int, tuple[float, ...]] = {}

    def at(self, steps: int, step: int) -> float:
        """The ratio of ``step`` in a ``steps``-long schedule (the last one past its end)."""
        ratios = self._by_length.get(steps)
        if ratios is None:
            ratios = self._by_length[steps] = ratios_for(self.mag_ratios, steps)
        return ratios[min(step, len(ratios) - 1)]


def load_model_calibration(model_dir: str | Path | None) -> Calibration | None:
    """The calibration stored beside a model's weights (one read of the file), or None."""
    if not model_dir:
        return None
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    coefficients = tuple(float(c) for c in record["coefficients"])
    lo, hi = record.get("x_range", (None, None))
    fit_range = None if lo is None or hi is None or hi <= lo else (float(lo), float(hi))
    stored = record.get("mag_ratios")
    mag_ratios = {int(n): tuple(float(r) for r in ratios) for n, ratios in stored.items()} if stored else None
    return Calibration(
        coefficients,
        fit_range,
        mag_ratios,
        _step_curves(record, "guided_change", path),
        _step_curves(record, "skip_sensitivity", path),
    )


def _step_curves(record: dict, name: str, path: Path) -> dict[int, tuple[float, ...]] | None:
    """A stored per-step curve per schedule length, checked: a policy must never read a
    negative or missing step of a schedule as "free"."""
    stored = record.get(name)
    if not stored:
        return None
    try:
        curves = {int(n): tuple(float(c) for c in curve) for n, curve in stored.items()}
    except (AttributeError, TypeError, ValueError):
        raise CalibrationError(f"{path}: {name} must map schedule lengths to lists of numbers") from None
    for n, curve in curves.items():
        if len(curve) != n or not all(c > 0 and np.isfinite(c) for c in curve):
            raise CalibrationError(
                f"{path}: {name}[{n}] must hold {n} positive numbers (one per step), got {len(curve)}"
            )
    return curves


def model_calibration(model_dir: str | Path | None, transformer_config) -> Calibration:
    """The model's own calibration, else Wan-1.3B's for a 1.3B-shaped Wan/SkyReels
    transformer (30 layers, width 1536), else the identity (the last two without a range)."""
    stored = load_model_calibration(model_dir)
    if stored is not None:
        return stored
    width = transformer_config.num_attention_heads * transformer_config.attention_head_dim
    if transformer_config.num_layers == 30 and width == 1536:
        return Calibration(WAN_1_3B_COEFFICIENTS)
    return Calibration(IDENTITY_COEFFICIENTS)


class Rescaler:
    """``d = max(poly(x), 0)``, numpy's highest-power-first convention.

    The clamp matters: a fitted polynomial can dip below zero outside its fitted range
    (Wan-1.3B's gives -0.05 at x = 0), and a negative distance would make a token's need
    shrink, so that even ``threshold = 0`` would skip work.

    With ``fit_range`` (the x range the polynomial was fitted on) it is continued
    linearly outside that range, with the secant slope over the range: a degree-4 fit
    explodes (or turns over) just beyond its data, e.g. for schedules of other lengths.
    """

    def __init__(self, coefficients: tuple[float, ...], fit_range: tuple[float, float] | None = None) -> None:
        self.coefficients = tuple(coefficients)
        self.fit_range = fit_range
        self._poly = np.poly1d(self.coefficients)
        if fit_range is not None:
            lo, hi = fit_range
            self._ends = (float(self._poly(lo)), float(self._poly(hi)))
            self._slope = max((self._ends[1] - self._ends[0]) / (hi - lo), 0.0)

    def __call__(self, rel_l1: float) -> float:
        if self.fit_range is not None:
            lo, hi = self.fit_range
            if rel_l1 > hi:
                return max(self._ends[1] + self._slope * (rel_l1 - hi), 0.0)
            if rel_l1 < lo:
                return max(self._ends[0] - self._slope * (lo - rel_l1), 0.0)
        return max(float(self._poly(rel_l1)), 0.0)
