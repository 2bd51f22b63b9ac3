"""Write and read videos (mp4 via imageio-ffmpeg/libx264, GIF via Pillow)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import numpy as np

SUPPORTED_SUFFIXES = (".mp4", ".gif")


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Pipeline output (F, H, W, 3) float in [0, 1] -> uint8."""
    return np.clip(np.rint(np.asarray(frames, np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16) -> Path:
    """Write uint8 frames (F, H, W, 3); written to a temporary name then renamed, so a
    failed write never leaves a truncated file under the requested name."""
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"unsupported video format {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    tmp = path.with_name(f".{path.stem}.partial{suffix}")
    if suffix == ".gif":
        iio.imwrite(tmp, frames, extension=".gif", duration=1000 / fps, loop=0)
    else:
        # pyav's writer runs gc.collect() on close: ~0.5 s over a heap holding torch and a
        # pipeline, ~12 ms with the objects that exist now frozen (vLLM's server freezes too)
        gc.freeze()
        try:
            iio.imwrite(
                tmp,
                frames,
                extension=".mp4",
                plugin="pyav",
                codec="libx264",
                fps=fps,
                out_pixel_format="yuv420p" if frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 else "yuv444p",
            )
        finally:
            gc.unfreeze()
    os.replace(tmp, path)
    return path


def read_video(path: str | Path) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(path, plugin="pyav" if str(path).endswith(".mp4") else None))
