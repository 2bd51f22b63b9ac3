"""Quality of a cached video against the full-compute video of the same seed."""

from __future__ import annotations

import math

import numpy as np


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"need two uint8 videos of one shape, got {a.shape}/{a.dtype} and {b.shape}/{b.dtype}")


def psnr_db(video: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB over the whole video's MSE (not a mean of per-frame PSNRs); uint8 RGB."""
    _check_pair(video, reference)
    mse = float(np.mean((video.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(video: np.ndarray, reference: np.ndarray) -> float:
    """SSIM averaged over frames (scikit-image, RGB, data range 255)."""
    from skimage.metrics import structural_similarity

    _check_pair(video, reference)
    return float(
        np.mean([structural_similarity(v, r, channel_axis=-1, data_range=255) for v, r in zip(video, reference)])
    )


def per_frame_psnr_db(video: np.ndarray, reference: np.ndarray) -> list[float]:
    _check_pair(video, reference)
    return [psnr_db(v[None], r[None]) for v, r in zip(video, reference)]
