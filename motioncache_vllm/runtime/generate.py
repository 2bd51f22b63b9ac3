"""One entry point for every way of generating a video: :func:`generate_video`.

(Request resolution, the pool and decoding live in :mod:`.request`; the resumable
chunked generation in :mod:`.stepwise`; this module only picks and runs one.)

- ``runtime="vanilla"``: the stock diffusers pipeline loop (full window every step);
- ``runtime="chunked"``: :class:`~motioncache_vllm.runtime.chunked.ChunkedRunner`, the
  active chunk only, finished chunks as K/V, with the cache policy of ``cache``.
"""

from __future__ import annotations

import time

import torch

from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.request import GenerationResult, ResolvedRequest, resolve, seeded_generator
from motioncache_vllm.runtime.stepwise import StepwiseGeneration
from motioncache_vllm.video_io import to_uint8


@torch.inference_mode()
def generate_video(
    pipe,
    request: GenerationRequest,
    policy: str = "none",
    progress: bool = False,
    runtime: str = "chunked",
    cache: CacheConfig | None = None,
    pool: ActivationPool | None = None,
    request_id: str | None = None,
) -> GenerationResult:
    """Generate ``request``.

    Everything runs under ``torch.inference_mode()``: some CPU kernels outside the
    denoising loop (text encoder, decoding) take numerically different paths with grad
    mode on, and the CLI, the Python API and the vLLM worker (which vLLM runs under
    inference mode) must give the same video bit for bit.

    Args:
        pipe: a loaded :class:`MotionCacheSkyReelsPipeline`.
        policy: cache policy name (overridden by ``cache.policy`` when ``cache`` is given).
        runtime: ``"chunked"`` (default) or ``"vanilla"`` (stock pipeline; policy must be none).
        cache: full cache settings (policy config + pool config).
        pool: an existing pool to share (e.g. across requests); built from ``cache`` if None.
        request_id: owner id of this request's blocks in a shared pool (unique per live request).
    """
    cache = cache or CacheConfig.decode(policy)
    r = resolve(pipe, request)
    if runtime == "vanilla":
        if cache.policy.name != "none":
            raise ValueError("the vanilla runtime only runs policy 'none'")
        return _generate_vanilla(pipe, r, progress)
    if runtime != "chunked":
        raise ValueError(f"unknown runtime {runtime!r}; valid: chunked, vanilla")
    return generate_chunked(pipe, r, cache, pool, progress, request_id=request_id)


def _generate_vanilla(pipe, r: ResolvedRequest, progress: bool) -> GenerationResult:
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    t0 = time.perf_counter()
    out = pipe(
        r.prompt,
        num_frames=r.num_frames,
        height=r.height,
        width=r.width,
        num_inference_steps=r.steps,
        guidance_scale=r.guidance,
        generator=seeded_generator(r.seed),
        output_type="np",
    )
    wall = time.perf_counter() - t0
    return GenerationResult(frames=to_uint8(out.frames[0]), wall_s=wall, steps=r.steps, guidance=r.guidance)


def generate_chunked(
    pipe,
    r: ResolvedRequest,
    cache: CacheConfig,
    pool: ActivationPool | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
    request_id: str | None = None,
) -> GenerationResult:
    """The chunked runtime on a resolved request: the resumable generation, stepped to the end."""
    gen = StepwiseGeneration(pipe, r, cache, pool, request_id=request_id, generator=generator, progress=progress)
    try:
        while not gen.done:
            gen.step()
    finally:
        gen.close()
    return gen.result()
