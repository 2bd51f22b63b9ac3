"""Does the recompute map follow motion? Spearman between per-block recompute counts and
per-block pixel motion of the reference (full-compute) video, chunk by chunk."""

from __future__ import annotations

import statistics

import numpy as np
import torch


def block_motion_per_chunk(
    frames: np.ndarray, grid: tuple[int, int], latent_frames: int, per_chunk: int, temporal: int = 4
) -> np.ndarray:
    """(chunks, rows, cols) mean |frame_t - frame_{t-1}| over each token block's pixels and
    over the pixel frames of each chunk (latent k >= 1 holds pixels 4k-3..4k)."""
    f, h, w, _ = frames.shape
    rows, cols = grid
    x = frames.astype(np.float32).mean(-1)  # grey
    diff = np.zeros_like(x)
    diff[1:] = np.abs(x[1:] - x[:-1])
    cells = diff.reshape(f, rows, h // rows, cols, w // cols).mean((2, 4))  # (F, rows, cols)
    chunks = -(-latent_frames // per_chunk)
    out = np.zeros((chunks, rows, cols), np.float32)
    for c in range(chunks):
        lo_latent, hi_latent = c * per_chunk, min((c + 1) * per_chunk, latent_frames) - 1
        lo = 1 if lo_latent == 0 else temporal * lo_latent - (temporal - 1)
        hi = min(temporal * hi_latent, f - 1)
        if hi >= lo:
            out[c] = cells[lo : hi + 1].mean(0)
    return out


def recompute_motion_spearman(counts: np.ndarray, frames: np.ndarray, per_chunk: int) -> dict:
    """``counts``: (latent frames, rows, cols) recompute counts per block (the report's
    ``recompute_counts``); ``frames``: the reference video. Returns the Spearman of each
    chunk (None where either map is flat) and their median."""
    latent, rows, cols = counts.shape
    motion = block_motion_per_chunk(frames, (rows, cols), latent, per_chunk)
    per_chunk_rho = []
    for c in range(motion.shape[0]):
        a = torch.from_numpy(counts[c * per_chunk].astype(np.float64)).flatten()
        b = torch.from_numpy(motion[c].astype(np.float64)).flatten()
        flat = float(a.max() - a.min()) == 0.0 or float(b.max() - b.min()) == 0.0
        per_chunk_rho.append(None if flat else round(_spearman_ties(a, b), 3))
    valid = [r for r in per_chunk_rho if r is not None]
    return {"per_chunk": per_chunk_rho, "median": round(statistics.median(valid), 3) if valid else 0.0}


def _spearman_ties(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman with average ranks (recompute counts have many ties)."""
    from scipy.stats import spearmanr  # scikit-image's dependency

    return float(spearmanr(a.numpy(), b.numpy()).statistic)
