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

import msgspec

from motioncache_vllm.config import CacheConfig


def enable(pipe, config: msgspec.Struct | CacheConfig | None = None, **cache_options) -> None:
    """Route ``pipe(...)`` through the MotionCache runtime.

    Args:
        pipe: a :class:`~motioncache_vllm.models.pipeline.MotionCacheSkyReelsPipeline`
            (``load_pipeline`` returns one; ``MotionCacheSkyReelsPipeline.from_pipe(p)``
            converts a stock ``SkyReelsV2DiffusionForcingPipeline``).
        config: a policy config (``MotionConfig()``, ``FlowCacheConfig()``, ...; its class
            picks the policy) or a full :class:`CacheConfig`. Default: ``MotionConfig()``.
        cache_options: ``tile``, ``pool_mib``, ``eviction`` when ``config`` is a policy config.
    """
    from motioncache_vllm.models.pipeline import MotionCacheSkyReelsPipeline
    from motioncache_vllm.policies import MotionConfig, policy_for_config

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
        cache = CacheConfig(
            policy=policy_for_config(config), policy_config=msgspec.structs.asdict(config), **cache_options
        )
    pipe._motioncache = cache
    pipe.motioncache_stats = None


def disable(pipe) -> None:
    """Back to the stock diffusers loop (a no-op when not enabled)."""
    pipe._motioncache = None
