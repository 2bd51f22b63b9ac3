"""Calibration data: the TeaCache polynomial that maps the relative L1 change of the
timestep modulation e0 to the expected relative change of the model output.

The coefficients are fitted per model (``motioncache calibrate`` fits and stores them
beside a model's weights as ``motioncache_calibration.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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


def load_model_coefficients(model_dir: str | Path | None) -> tuple[float, ...] | None:
    """Coefficients stored beside a model's weights, or None."""
    if not model_dir:
        return None
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return tuple(float(c) for c in json.loads(path.read_text())["coefficients"])


def model_coefficients(model_dir: str | Path | None, transformer_config) -> tuple[float, ...]:
    """The model's own calibration, else Wan-1.3B's for a 1.3B-shaped Wan/SkyReels
    transformer (30 layers, width 1536), else the identity."""
    stored = load_model_coefficients(model_dir)
    if stored is not None:
        return stored
    width = transformer_config.num_attention_heads * transformer_config.attention_head_dim
    if transformer_config.num_layers == 30 and width == 1536:
        return WAN_1_3B_COEFFICIENTS
    return IDENTITY_COEFFICIENTS


class Rescaler:
    """``d = max(poly(x), 0)``, numpy's highest-power-first convention.

    The clamp matters: a fitted polynomial can dip below zero outside its fitted range
    (Wan-1.3B's gives -0.05 at x = 0), and a negative distance would make a token's need
    shrink, so that even ``threshold = 0`` would skip work.
    """

    def __init__(self, coefficients: tuple[float, ...]) -> None:
        self.coefficients = tuple(coefficients)
        self._poly = np.poly1d(self.coefficients)

    def __call__(self, rel_l1: float) -> float:
        return max(float(self._poly(rel_l1)), 0.0)
