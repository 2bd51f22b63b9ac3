"""One-call API for diffusers users, in diffusers' style (as cache-dit's ``enable_cache``).

    >>> import motioncache_vllm
    >>> from motioncache_vllm import MotionConfig
    >>> pipe = motioncache_vllm.load_pipeline("embedded")   # or any SkyReelsV2DiffusionForcingPipeline
    >>> motioncache_vllm.enable(pipe, MotionConfig(threshold=0.2))
    >>> video = pipe("a red circle moves right").frames[0]   # the chunked runtime + MotionCache
    >>> pipe.motioncache_stats["ideal_speedup"]
    >>> motioncache_vllm.disable(pipe)                        # back to the stock loop

The enabled pipeline takes the stock call: ``prompt`` or ``prompt_embeds`` (and the
negative ones), ``ar_step`` 0 or > 0, ``causal_block_size``, long videos
(``base_num_frames``, ``overlap_history``, ``addnoise_condition``), ``generator``,
``output_type``, ``return_dict``. The stock timestep matrix runs on the chunked runtime
(:mod:`motioncache_vllm.runtime.forcing`); what it cannot run (several videos per call,
callbacks, given ``latents``, ``attention_kwargs``, a transformer without block-causal
attention, another cache enabled on it) runs the stock loop, with one warning.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

import torch

from motioncache_vllm.config import CacheConfig, MotionConfig, PolicyConfigBase, PoolConfig

logger = logging.getLogger(__name__)

_ENABLED_CLASSES: dict[type, type] = {}


def enable(pipe, config: PolicyConfigBase | CacheConfig | None = None, **cache_options: Any) -> None:
    """Route ``pipe(...)`` through the MotionCache runtime, in place.

    Args:
        pipe: a diffusers ``SkyReelsV2DiffusionForcingPipeline`` (stock, or the
            :class:`~motioncache_vllm.models.pipeline.MotionCacheSkyReelsPipeline` that
            ``load_pipeline`` returns).
        config: a policy config (``MotionConfig()``, ``FlowCacheConfig()``, ...; its class
            picks the policy) or a full :class:`CacheConfig`. Default: ``MotionConfig()``.
        cache_options: :class:`~motioncache_vllm.config.PoolConfig` fields (``tile``,
            ``pool_mib``, ...) when ``config`` is a policy config.
    """
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    if not isinstance(pipe, SkyReelsV2DiffusionForcingPipeline):
        raise TypeError(f"enable() needs a SkyReelsV2DiffusionForcingPipeline, got {type(pipe).__name__}")
    if getattr(pipe, "_motioncache", None) is not None:
        raise RuntimeError("MotionCache is already enabled on this pipeline; call disable(pipe) first")
    if isinstance(config, CacheConfig):
        if cache_options:
            raise TypeError("pass cache options inside the CacheConfig")
        cache = config
    else:
        config = config if config is not None else MotionConfig()
        if not isinstance(config, PolicyConfigBase):
            raise TypeError(f"config must be a policy config (MotionConfig(), ...) or a CacheConfig, got {config!r}")
        cache = CacheConfig(policy=config, pool=PoolConfig.decode(cache_options))
    pipe._motioncache = cache
    pipe.motioncache_stats = None
    # in place: the instance's class becomes a subclass of its own whose __call__ runs the
    # chunked runtime; the pipeline class itself never calls up into the runtime
    pipe.__class__ = _enabled_class(type(pipe))


def disable(pipe) -> None:
    """Back to the stock diffusers loop (a no-op when not enabled)."""
    stock = getattr(type(pipe), "_motioncache_stock_class", None)
    if stock is not None:
        pipe.__class__ = stock
    pipe._motioncache = None


def _enabled_class(cls: type) -> type:
    sub = _ENABLED_CLASSES.get(cls)
    if sub is None:
        sub = _ENABLED_CLASSES[cls] = type(
            cls.__name__,
            (cls,),
            {"__call__": _cached_call, "_motioncache_stock_class": cls, "__module__": cls.__module__},
        )
    return sub


def _cached_call(self, *args: Any, **kwargs: Any):
    """``pipe(...)`` of an enabled pipeline: the stock call's arguments, the chunked runtime."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from motioncache_vllm.models.pipeline import MotionCacheSkyReelsPipeline

    stock_cls = type(self)._motioncache_stock_class
    keep = None
    if isinstance(self, MotionCacheSkyReelsPipeline):  # its defaults and frame padding first
        kwargs, keep = self.stock_arguments(*args, **kwargs)
        args = ()
    try:
        bound = inspect.signature(SkyReelsV2DiffusionForcingPipeline.__call__).bind(self, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{stock_cls.__name__}.__call__: {exc}") from None
    bound.apply_defaults()
    call = dict(bound.arguments)
    call.pop("self")
    reason = _uncacheable(self, call)
    if reason is not None:
        warnings.warn(f"MotionCache: {reason}; running the stock loop for this call", stacklevel=2)
        self.motioncache_stats = None
        out = SkyReelsV2DiffusionForcingPipeline.__call__(self, **call)
    else:
        with torch.inference_mode():  # as generate_video: the same kernels as the CLI and the server
            out = _forcing_call(self, self._motioncache, call)
    return out if keep is None else self.trim_frames(out, keep, call["output_type"])


def _uncacheable(pipe, call: dict) -> str | None:
    """Why the runtime cannot run this call (the stock loop will), or None."""
    prompt, embeds = call["prompt"], call["prompt_embeds"]
    batch = (
        len(prompt) if isinstance(prompt, list) else (1 if prompt is not None or embeds is None else embeds.shape[0])
    )
    from motioncache_vllm.runtime.forcing import window_latent_frames

    cfg = pipe.transformer.config
    block = call["causal_block_size"] or cfg.num_frame_per_block
    t = pipe.vae_scale_factor_temporal
    frames = max(call["num_frames"] // t * t + 1 if call["num_frames"] % t != 1 else call["num_frames"], 1)
    windows = window_latent_frames(t, frames, call["base_num_frames"], call["overlap_history"])
    checks = [
        (batch * (call["num_videos_per_prompt"] or 1) != 1, "one video per call only"),
        (call["latents"] is not None, "given latents"),
        (call["callback_on_step_end"] is not None, "callback_on_step_end"),
        (call["attention_kwargs"] is not None, "attention_kwargs"),
        (block < 2, f"causal_block_size {block}: the transformer's attention is not block-causal"),
        (any(w % block for w in windows), f"windows of {windows} latent frames are not whole causal blocks of {block}"),
        (getattr(pipe.transformer, "is_cache_enabled", False), "a diffusers cache is enabled on the transformer"),
        (call["output_type"] not in ("np", "pil", "pt", "latent"), f"output_type {call['output_type']!r}"),
    ]
    return next((why for bad, why in checks if bad), None)


class _ForcingArgs:
    """The stock call's arguments the schedule needs (see ``runtime.forcing``)."""

    def __init__(self, call: dict, num_frames: int, causal_block_size: int) -> None:
        self.height, self.width, self.num_frames = call["height"], call["width"], num_frames
        self.num_inference_steps, self.guidance_scale = call["num_inference_steps"], call["guidance_scale"]
        self.ar_step, self.causal_block_size = call["ar_step"], causal_block_size
        self.overlap_history, self.base_num_frames = call["overlap_history"], call["base_num_frames"]
        self.addnoise_condition = call["addnoise_condition"]


def _forcing_call(pipe, cache: CacheConfig, call: dict):
    """The stock ``__call__`` with its denoising loop replaced by the chunked runtime."""
    from diffusers.pipelines.skyreels_v2.pipeline_output import SkyReelsV2PipelineOutput

    from motioncache_vllm.policies import make_policy
    from motioncache_vllm.policies.calibration import model_calibration
    from motioncache_vllm.runtime.chunked import ChunkedRunner
    from motioncache_vllm.runtime.forcing import diffusion_forcing_latents
    from motioncache_vllm.runtime.request import make_pool

    c = call
    pipe.check_inputs(
        c["prompt"],
        c["negative_prompt"],
        c["height"],
        c["width"],
        c["prompt_embeds"],
        c["negative_prompt_embeds"],
        c["callback_on_step_end_tensor_inputs"],
        c["overlap_history"],
        c["num_frames"],
        c["base_num_frames"],
    )
    num_frames = c["num_frames"]
    if num_frames % pipe.vae_scale_factor_temporal != 1:  # as the stock call rounds
        num_frames = num_frames // pipe.vae_scale_factor_temporal * pipe.vae_scale_factor_temporal + 1
    num_frames = max(num_frames, 1)
    pipe._guidance_scale, pipe._attention_kwargs = c["guidance_scale"], None
    pipe._current_timestep, pipe._interrupt = None, False
    device = pipe._execution_device
    cond, uncond = pipe.encode_prompt(
        prompt=c["prompt"],
        negative_prompt=c["negative_prompt"],
        do_classifier_free_guidance=pipe.do_classifier_free_guidance,
        num_videos_per_prompt=1,
        prompt_embeds=c["prompt_embeds"],
        negative_prompt_embeds=c["negative_prompt_embeds"],
        max_sequence_length=c["max_sequence_length"],
        device=device,
    )
    dtype = pipe.transformer.dtype
    embeds = {"cond": cond.to(dtype)} | ({"uncond": uncond.to(dtype)} if pipe.do_classifier_free_guidance else {})
    block = c["causal_block_size"]
    if block is None:
        block = pipe.transformer.config.num_frame_per_block
    else:
        pipe.transformer._set_ar_attention(block)  # the stock call's side effect, kept
    calibration = model_calibration(getattr(pipe, "name_or_path", None), pipe.transformer.config)
    policy = make_policy(cache.policy, None, *calibration)  # once per call
    pool = make_pool(pipe, cache.pool, block)
    runner = ChunkedRunner(
        pipe, policy, pool, tile=cache.pool.tile, cfg_shared=cache.pool.cfg_shared, cfg_batched=cache.pool.cfg_batched
    )
    if pipe.transformer.config.inject_sample_info:
        runner.call_kwargs = {"fps": [0 if c["fps"] == 16 else 1]}
    latents, counters = diffusion_forcing_latents(
        pipe, runner, embeds, _ForcingArgs(c, num_frames, block), c["generator"], device
    )
    pipe.motioncache_stats = _stats(counters, pool)
    if c["output_type"] == "latent":
        video = latents
    else:
        vae = pipe.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents * std + mean, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type=c["output_type"])
    pipe.maybe_free_model_hooks()
    return SkyReelsV2PipelineOutput(frames=video) if c["return_dict"] else (video,)


def _stats(counters: list, pool) -> dict:
    total = sum(k.token_steps_total for k in counters)
    computed = sum(k.token_steps_computed for k in counters)
    commits = sum(k.commit_tokens for k in counters)
    return dict(
        token_steps_total=total,
        token_steps_computed=computed,
        commit_token_passes=commits,
        ideal_speedup=round((total + commits) / max(computed + commits, 1), 4),
        full_steps=sum(k.full_steps for k in counters),
        partial_steps=sum(k.partial_steps for k in counters),
        skipped_steps=sum(k.skipped_steps for k in counters),
        forced_blocks=sum(k.forced_blocks for k in counters),
        pool_peak_bytes=pool.stats.peak_bytes,
        evictions=pool.stats.evictions,
        windows=len(counters),
    )
