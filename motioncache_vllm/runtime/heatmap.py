"""Recompute heat map: how often each spatial block was recomputed, frame by frame."""

from __future__ import annotations

import numpy as np


def recompute_video(frames: np.ndarray, counts: np.ndarray, steps: int, temporal: int = 4) -> np.ndarray:
    """Side-by-side video: generated frame | heat map of recompute counts (0..steps).

    Args:
        frames: (F, H, W, 3) uint8 generated video.
        counts: (latent frames, rows, cols) recompute counts per token position.
        steps: denoising steps per chunk (the colour scale's maximum).
        temporal: pixel frames per latent frame (pixel frame f <-> latent (f + 3) // 4).
    """
    from matplotlib import colormaps

    f, h, w, _ = frames.shape
    cmap = colormaps["inferno"]
    latent_index = np.minimum((np.arange(f) + temporal - 1) // temporal, counts.shape[0] - 1)
    rows, cols = counts.shape[1:]
    heat = cmap(np.clip(counts / max(steps, 1), 0.0, 1.0))[..., :3]  # (L, rows, cols, 3)
    heat = heat.repeat(h // rows, axis=1).repeat(w // cols, axis=2)
    heat = (heat[latent_index] * 255).round().astype(np.uint8)
    return np.concatenate([frames, heat], axis=2)
