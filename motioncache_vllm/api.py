"""One-call API for diffusers users, in diffusers' style.

    >>> import motioncache_vllm
    >>> from motioncache_vllm.policies import MotionConfig
    >>> pipe = motioncache_vllm.load_pipeline("embedded")
    >>> motioncache_vllm.enable(pipe, MotionConfig(threshold=0.2))
    >>> video = pipe("a red circle moves right").frames[0]   # chunked runtime + MotionCache
    >>> pipe.motioncache_stats["ideal_speedup"]
    >>> motioncache_vllm.disable(pipe)                        # back to the stock loop
"""

from __future__ import annotations

from motioncache_vllm.config import CacheConfig, MotionConfig, PolicyConfigBase, PoolConfig

_ENABLED_CLASSES: dict[type, type] = {}


def enable(pipe, config: PolicyConfigBase | CacheConfig | None = None, **cache_options) -> None:
    """Route ``pipe(...)`` through the MotionCache runtime.

    Args:
        pipe: a :class:`~motioncache_vllm.models.pipeline.MotionCacheSkyReelsPipeline`
            (``load_pipeline`` returns one; ``MotionCacheSkyReelsPipeline.from_pipe(p)``
            converts a stock ``SkyReelsV2DiffusionForcingPipeline``).
        config: a policy config (``MotionConfig()``, ``FlowCacheConfig()``, ...; its class
            picks the policy) or a full :class:`CacheConfig`. Default: ``MotionConfig()``.
        cache_options: :class:`~motioncache_vllm.config.PoolConfig` fields (``tile``, ``pool_mib``, ...)
            when ``config`` is a policy config.
    """
    from motioncache_vllm.models.pipeline import MotionCacheSkyReelsPipeline

    if not isinstance(pipe, MotionCacheSkyReelsPipeline):
        raise TypeError(
            f"enable() needs a MotionCacheSkyReelsPipeline, got {type(pipe).__name__}; "
            "convert with MotionCacheSkyReelsPipeline.from_pipe(pipe)"
        )
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
    # in place, as cache-dit's enable_cache: the instance's class becomes a subclass of
    # its own whose __call__ runs the chunked runtime; the pipeline class itself never
    # calls up into the runtime
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
            cls.__name__, (cls,), {"__call__": _cached_call, "_motioncache_stock_class": cls, "__module__": cls.__module__}
        )
    return sub


def _cached_call(
    self,
    prompt=None,
    negative_prompt=None,
    height=None,
    width=None,
    num_frames=None,
    num_inference_steps=None,
    guidance_scale=None,
    ar_step=None,
    max_sequence_length=None,
    output_type="np",
    **pipeline_kwargs,
):
    """``pipe(...)`` of an enabled pipeline."""
    return call_with_cache(
        self, self._motioncache, prompt, negative_prompt, height, width, num_frames, num_inference_steps,
        guidance_scale, ar_step, max_sequence_length, output_type, pipeline_kwargs,
    )


def call_with_cache(
    pipe, cache: CacheConfig, prompt, negative_prompt, height, width, num_frames, num_inference_steps,
    guidance_scale, ar_step, max_sequence_length, output_type, extra: dict,
):
    """``pipe(...)`` after :func:`motioncache_vllm.enable`: same arguments, chunked runtime."""
    import numpy as np
    import torch
    from diffusers.pipelines.skyreels_v2.pipeline_output import SkyReelsV2PipelineOutput

    from motioncache_vllm.config import GenerationRequest
    from motioncache_vllm.runtime.generate import generate_chunked
    from motioncache_vllm.runtime.request import ResolvedRequest, resolve

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
        result = generate_chunked(pipe, r, cache, pool=None, progress=False, generator=generator)
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
