"""One entry point for every way of generating a video: :func:`generate_video`.

- ``runtime="vanilla"``: the stock diffusers pipeline loop (full window every step);
- ``runtime="chunked"``: :class:`~motioncache_vllm.runtime.chunked.ChunkedRunner`, the
  active chunk only, finished chunks as K/V, with the cache policy of ``cache``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from motioncache_vllm.blocks.eviction import make_eviction_order
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.video_io import to_uint8


@dataclass
class GenerationResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    wall_s: float
    steps: int
    guidance: float
    stats: dict = field(default_factory=dict)
    recompute_map: np.ndarray | None = None  # (latent frames, token rows, token cols)


@dataclass(frozen=True)
class ResolvedRequest:
    prompt: str
    num_frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    max_sequence_length: int


def resolve(pipe, request: GenerationRequest) -> ResolvedRequest:
    cfg = pipe.config
    return ResolvedRequest(
        prompt=request.prompt,
        num_frames=request.num_frames or cfg.default_num_frames,
        height=request.height or cfg.default_height,
        width=request.width or cfg.default_width,
        steps=request.num_inference_steps or cfg.default_num_inference_steps,
        guidance=cfg.default_guidance_scale if request.guidance_scale is None else request.guidance_scale,
        seed=request.seed,
        max_sequence_length=cfg.default_max_sequence_length,
    )


def seeded_generator(seed: int) -> torch.Generator:
    """Seed both the explicit generator and the global RNG: diffusers' SkyReels-V2 DF
    pipeline draws some noise from the global RNG (see DESIGN.md section 6)."""
    torch.manual_seed(seed)
    return torch.Generator("cpu").manual_seed(seed)


def make_pool(pipe, cache: CacheConfig, latent_frames_per_chunk: int | None = None) -> ActivationPool:
    """A pool whose slots hold one spatial block (tile x tile tokens x chunk frames)."""
    frames = latent_frames_per_chunk or pipe.causal_block_size
    dim = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    budget = None if cache.pool_mib is None else int(cache.pool_mib * 2**20)
    return ActivationPool(
        frames * cache.tile * cache.tile, dim, budget, make_eviction_order(cache.eviction),
        dtype=cache.pool_dtype, pair_dtype=cache.cfg_delta_dtype,
    )


def decode_latents(pipe, latents: torch.Tensor, num_frames: int) -> np.ndarray:
    """Normalised latents -> uint8 frames, as the stock pipeline decodes them."""
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    video = vae.decode(latents * std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    return to_uint8(frames[:num_frames])


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
        cache: full cache settings (policy config, tile, pool budget, eviction).
        pool: an existing pool to share (e.g. across requests); built from ``cache`` if None.
        request_id: owner id of this request's blocks in a shared pool (unique per live request).
    """
    cache = cache or CacheConfig(policy=policy)
    r = resolve(pipe, request)
    if runtime == "vanilla":
        if cache.policy != "none":
            raise ValueError("the vanilla runtime only runs policy 'none'")
        return _generate_vanilla(pipe, r, progress)
    if runtime != "chunked":
        raise ValueError(f"unknown runtime {runtime!r}; valid: chunked, vanilla")
    return _generate_chunked(pipe, r, cache, pool, progress, request_id=request_id)


def _generate_vanilla(pipe, r: ResolvedRequest, progress: bool) -> GenerationResult:
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    t0 = time.perf_counter()
    out = pipe(
        r.prompt, num_frames=r.num_frames, height=r.height, width=r.width, num_inference_steps=r.steps,
        guidance_scale=r.guidance, generator=seeded_generator(r.seed), output_type="np",
    )
    wall = time.perf_counter() - t0
    return GenerationResult(frames=to_uint8(out.frames[0]), wall_s=wall, steps=r.steps, guidance=r.guidance)


def _generate_chunked(
    pipe,
    r: ResolvedRequest,
    cache: CacheConfig,
    pool,
    progress: bool,
    generator: torch.Generator | None = None,
    request_id: str | None = None,
) -> GenerationResult:
    # one implementation: the resumable generation, stepped to the end
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    gen = StepwiseGeneration(pipe, r, cache, pool, request_id=request_id, generator=generator, progress=progress)
    try:
        while not gen.done:
            gen.step()
    finally:
        gen.close()
    return gen.result()


def call_with_cache(
    pipe, cache: CacheConfig, prompt, negative_prompt, height, width, num_frames, num_inference_steps,
    guidance_scale, ar_step, max_sequence_length, output_type, extra: dict,
):
    """``pipe(...)`` after :func:`motioncache_vllm.enable`: same arguments, chunked runtime."""
    from diffusers.pipelines.skyreels_v2.pipeline_output import SkyReelsV2PipelineOutput

    unsupported = sorted(set(extra) - {"generator", "return_dict"})
    if not isinstance(prompt, str) or negative_prompt is not None or ar_step is not None or unsupported:
        raise ValueError(
            "with MotionCache enabled the pipeline takes one prompt string and "
            "height/width/num_frames/num_inference_steps/guidance_scale/generator/output_type; "
            f"got also: {', '.join(unsupported) or 'negative_prompt/ar_step/prompt list'}. "
            "Call motioncache_vllm.disable(pipe) for the stock pipeline."
        )
    request = GenerationRequest(
        prompt=prompt, num_frames=num_frames, height=height, width=width,
        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
    )
    r = resolve(pipe, request)
    if max_sequence_length:
        r = ResolvedRequest(**{**r.__dict__, "max_sequence_length": max_sequence_length})
    generator = extra.get("generator") or torch.Generator("cpu").manual_seed(0)
    with torch.inference_mode():  # as generate_video
        result = _generate_chunked(pipe, r, cache, pool=None, progress=False, generator=generator)
    pipe.motioncache_stats = result.stats
    frames = result.frames[None].astype(np.float32) / 255.0
    if output_type == "pil":
        from PIL import Image

        frames = [[Image.fromarray(f) for f in result.frames]]
    elif output_type == "pt":
        frames = torch.from_numpy(frames)
    if extra.get("return_dict", True):
        return SkyReelsV2PipelineOutput(frames=frames)
    return (frames,)
