"""motioncache_vllm: MotionCache for autoregressive video diffusion, as a vLLM plugin.

Imports are lazy so that ``import motioncache_vllm`` (done by vLLM's plugin loader in
every process) stays cheap.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Same seed, same frames: MKL's GEMM takes thread-count-dependent code paths for small
# row counts (measured: 5-11 rows, e.g. the stock loop's per-frame time embedding, give
# different low bits with 1 and 2 threads), which 30 steps x CFG 5 grow into visible
# pixel differences. Strict CNR mode makes MKL's results bitwise reproducible whatever the
# thread count or data alignment. MKL reads it at its first call, so it is set here, on
# import (vLLM's plugin loader and the CLI import this package before any matmul); a
# value the user set stands.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": "motioncache_vllm.models.loading",
    "MotionCacheSkyReelsPipeline": "motioncache_vllm.models.pipeline",
    "enable": "motioncache_vllm.api",
    "disable": "motioncache_vllm.api",
    # settings (torch-free)
    "CacheConfig": "motioncache_vllm.config",
    "PoolConfig": "motioncache_vllm.config",
    "GenerationRequest": "motioncache_vllm.config",
    "NoneConfig": "motioncache_vllm.config",
    "TeaCacheConfig": "motioncache_vllm.config",
    "FlowCacheConfig": "motioncache_vllm.config",
    "MotionConfig": "motioncache_vllm.config",
    "MagCacheConfig": "motioncache_vllm.config",
    "generate_video": "motioncache_vllm.runtime.generate",
    # diffusers resolves pipeline components as ``<library>.<ClassName>``
    "FixedLinearVideoAutoencoder": "motioncache_vllm.models.latent",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'motioncache_vllm' has no attribute {name!r}")
