"""A simple object tracker for the quality gate: does a video show what its caption says?

For a caption "a <colour> <shape> moves <direction> ...", the tracker finds, per frame,
the pixels nearest (in RGB) to the caption's colour among the palette, and checks

- colour: the caption's colour is the most frequent palette colour among pixels that are
  clearly not background;
- direction: the centroid of that colour's pixels moved mostly along the captioned
  direction between the first and last third of the video.
"""

from __future__ import annotations

import re
import warnings

import numpy as np

from motioncache_vllm.data.procedural import BACKGROUNDS, COLOURS, DIRECTIONS

_PALETTE = np.array(list(COLOURS.values()), np.float32)
_NAMES = list(COLOURS)
_CAPTION = re.compile(r"a (\w+) (\w+) moves (\w+)")


def colour_masks(frames: np.ndarray, max_dist: float = 90.0) -> np.ndarray:
    """(F, H, W, 3) uint8 -> (F, H, W) palette index, -1 where no palette colour is close."""
    x = frames.astype(np.float32)
    d_pal = np.linalg.norm(x[..., None, :] - _PALETTE, axis=-1)  # F,H,W,P
    d_bg = np.linalg.norm(x[..., None, :] - np.array(BACKGROUNDS, np.float32), axis=-1).min(-1)
    idx = d_pal.argmin(-1)
    best = d_pal.min(-1)
    idx[(best > max_dist) | (d_bg < best)] = -1
    return idx


def check(frames: np.ndarray, caption: str, min_pixels: int = 6) -> tuple[bool, bool]:
    """(colour agrees, direction agrees) for a "a C S moves D" caption."""
    m = _CAPTION.match(caption)
    if m is None:
        raise ValueError(f"caption {caption!r} is not of the form 'a <colour> <shape> moves <direction>'")
    colour, _, direction = m.groups()
    idx = colour_masks(frames)
    counts = np.bincount(idx[idx >= 0].ravel(), minlength=len(_NAMES))
    colour_ok = bool(counts.sum() >= min_pixels and _NAMES[int(counts.argmax())] == colour)
    target = _NAMES.index(colour)
    centroids = []
    for f in range(frames.shape[0]):
        ys, xs = np.nonzero(idx[f] == target)
        centroids.append((xs.mean(), ys.mean()) if len(xs) >= min_pixels else (np.nan, np.nan))
    c = np.array(centroids)
    n = len(c)
    with warnings.catch_warnings():  # all-NaN thirds (object absent) give NaN, handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        first, last = np.nanmean(c[: max(n // 3, 1)], 0), np.nanmean(c[-max(n // 3, 1) :], 0)
    move = last - first
    if not np.all(np.isfinite(move)) or np.abs(move).max() < 1.0:
        return colour_ok, False
    dx, dy = DIRECTIONS[direction]
    axis = 0 if dx != 0 else 1
    sign = dx if dx != 0 else dy
    direction_ok = bool(abs(move[axis]) >= abs(move[1 - axis]) and np.sign(move[axis]) == sign)
    return colour_ok, direction_ok
