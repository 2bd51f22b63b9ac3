"""Motion scores (pure torch): how much each token changes from frame to frame.

Token layout of one chunk (``F`` latent frames, ``H x W`` tokens per frame), flattened
frame-major as the transformer's patch embedding produces it::

    index = f * (H * W) + y * W + x

MotionCache (DESIGN.md section 2, step 7): for a hidden state ``h`` of shape
(F, H*W, C) and the previous frame ``h_prev``::

    M_f[p] = mean_c |h_f[p] - h_{f-1}[p]| / (mean_c |h_{f-1}[p]| + 1e-8)

frame 0 compares with the previous chunk's last frame; then each frame is min-max
normalised into [alpha, 1].
"""

from __future__ import annotations

import torch

EPS = 1e-8


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """TeaCache's distance: mean|a - b| / mean|b|."""
    return float((a - b).abs().mean() / (b.abs().mean() + EPS))


def inter_frame_motion(h: torch.Tensor, previous_last_frame: torch.Tensor | None) -> torch.Tensor:
    """Raw motion per token.

    Args:
        h: (F, P, C) hidden states of one chunk, P tokens per frame.
        previous_last_frame: (P, C) last frame of the previous chunk, or ``None`` for
            the first chunk (frame 0 then gets zero motion).

    Returns:
        (F, P) non-negative motion scores.
    """
    prev = torch.empty_like(h)
    prev[1:] = h[:-1]
    prev[0] = h[0] if previous_last_frame is None else previous_last_frame
    return (h - prev).abs().mean(-1) / (prev.abs().mean(-1) + EPS)


def motion_weights(motion: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-frame min-max normalisation of (F, P) motion into [alpha, 1].

    A frame with no spread (a static frame, or frame 0 of the first chunk) gets weight 1
    everywhere: with nothing to rank, the cache must not slow that frame's updates.
    """
    lo = motion.min(dim=1, keepdim=True).values
    hi = motion.max(dim=1, keepdim=True).values
    span = hi - lo
    norm = torch.where(span > EPS, (motion - lo) / span.clamp_min(EPS), torch.ones_like(motion))
    return alpha + (1.0 - alpha) * norm


def block_motion(weights: torch.Tensor, grid: tuple[int, int], tile: int) -> torch.Tensor:
    """Mean of (F, H*W) token weights over each spatial block (tile x tile tokens, all F frames).

    Returns (num_blocks,) in block order ``by * ceil(W / tile) + bx``.
    """
    f = weights.shape[0]
    h, w = grid
    x = weights.reshape(f, 1, h, w)
    return torch.nn.functional.avg_pool2d(x, tile, stride=tile, ceil_mode=True).mean(0).flatten()
