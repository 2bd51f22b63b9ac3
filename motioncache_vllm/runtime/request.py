"""What every runtime shares: a request resolved against the model's defaults, the
seeded generator, the activation pool of a pipeline, latents -> frames, and the result.

The lowest module of ``runtime/``: it imports no other runtime module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from motioncache_vllm.blocks.eviction import make_eviction_order
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.config import GenerationRequest, PoolConfig
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
    """The request with the model's defaults filled in, after the checks every entry point
    shares (``limits.check_request``: a blank caption, sizes that are not multiples of the
    model's spatial factor, frames not 4k+1, a non-finite guidance raise ``InvalidRequest``,
    a ``ValueError``)."""
    from motioncache_vllm.limits import check_request, geometry_of

    check_request(
        geometry_of(pipe),
        prompt=request.prompt,
        num_frames=request.num_frames,
        height=request.height,
        width=request.width,
        guidance_scale=request.guidance_scale,
    )
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


def make_pool(pipe, config: PoolConfig, latent_frames_per_chunk: int | None = None) -> ActivationPool:
    """A pool whose slots hold one spatial block (tile x tile tokens x chunk frames)."""
    frames = latent_frames_per_chunk or pipe.causal_block_size
    dim = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    budget = None if config.pool_mib is None else int(config.pool_mib * 2**20)
    return ActivationPool(
        frames * config.tile * config.tile,
        dim,
        budget,
        make_eviction_order(config.eviction),
        dtype=config.pool_dtype,
        pair_dtype=config.cfg_delta_dtype,
    )


def decode_latents(pipe, latents: torch.Tensor, num_frames: int) -> np.ndarray:
    """Normalised latents -> uint8 frames, as the stock pipeline decodes them."""
    vae = pipe.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
    video = vae.decode(latents * std + mean, return_dict=False)[0]
    frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
    return to_uint8(frames[:num_frames])
