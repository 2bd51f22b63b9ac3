"""motioncache_vllm: MotionCache for autoregressive video diffusion, as a vLLM plugin.

Imports are lazy so that ``import motioncache_vllm`` (done by vLLM's plugin loader in
every process) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": "motioncache_vllm.models.loading",
    "MotionCacheSkyReelsPipeline": "motioncache_vllm.models.pipeline",
    "enable": "motioncache_vllm.api",
    "disable": "motioncache_vllm.api",
    # diffusers resolves pipeline components as ``<library>.<ClassName>``
    "FixedLinearVideoAutoencoder": "motioncache_vllm.models.latent",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'motioncache_vllm' has no attribute {name!r}")
