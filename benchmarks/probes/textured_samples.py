"""Does a model render textured static backgrounds and moving objects? Full-compute videos
of CAPTIONS x SEEDS, a PNG grid (frames first/middle/last per row) and per video: background
texture (std of the non-object pixels of the middle frame; flat backgrounds give ~1), background
change over time (mean |frame - previous| on pixels no object ever covers), the tracker's verdict.

``python benchmarks/probes/textured_samples.py MODEL "CAPTION|..." SEEDS FRAMES STEPS OUT.png``
(SEEDS e.g. ``0,1,2``)."""

from __future__ import annotations

import sys

import numpy as np


def background_mask(frames: np.ndarray) -> np.ndarray:
    """(H, W) pixels no palette-coloured object covers in any frame (grown by 2 px)."""
    from motioncache_vllm.data.tracker import colour_masks

    covered = (colour_masks(frames) >= 0).any(0)
    grown = covered.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            grown |= np.roll(covered, (dy, dx), axis=(0, 1))
    return ~grown


def main(model: str, captions: str, seeds: str, frames: str, steps: str, out: str) -> None:
    import imageio.v3 as iio

    from motioncache_vllm.config import GenerationRequest
    from motioncache_vllm.data.tracker import check
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    pipe = load_pipeline(model)
    rows = []
    for caption in captions.split("|"):
        for seed in (int(s) for s in seeds.split(",")):
            req = GenerationRequest(prompt=caption, num_frames=int(frames), num_inference_steps=int(steps), seed=seed)
            video = generate_video(pipe, req).frames
            bg = background_mask(video)
            mid = video[len(video) // 2].astype(np.float32)
            texture = float(mid[bg].std(0).mean()) if bg.any() else float("nan")
            drift = float(np.abs(np.diff(video.astype(np.float32), axis=0))[:, bg].mean()) if bg.any() else float("nan")
            verdict = check(video, caption) if caption.startswith("a ") and " moves " in caption else None
            print(
                f"{caption!r} seed {seed}: background texture std {texture:.1f}, background change/frame "
                f"{drift:.2f}, background share {bg.mean():.2f}, tracker (colour, direction) {verdict}",
                flush=True,
            )
            rows.append(np.concatenate([video[0], video[len(video) // 2], video[-1]], axis=1))
    grid = np.concatenate(rows, axis=0).repeat(2, 0).repeat(2, 1)
    iio.imwrite(out, grid)


if __name__ == "__main__":
    main(*sys.argv[1:])
