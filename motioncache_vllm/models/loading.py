"""Build or load the pipeline: the embedded weights, a diffusers folder, or a fresh tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import motioncache_vllm.models.latent  # noqa: F401  (diffusers resolves the VAE class through sys.modules)
from motioncache_vllm.models.embedded import (
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
)
from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS, resolve_model_path
from motioncache_vllm.models.pipeline import MotionCacheSkyReelsPipeline
from motioncache_vllm.models.wan_adapter import register_diffusers_block_metadata


def build_pipeline(vae, transformer_overrides: dict | None = None, **defaults) -> MotionCacheSkyReelsPipeline:
    """A randomly initialised embedded-architecture pipeline (for training and tests)."""
    return MotionCacheSkyReelsPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(),
        transformer=build_transformer(**(transformer_overrides or {})),
        vae=vae,
        scheduler=build_scheduler(),
        **defaults,
    )


def load_pipeline(model: str | Path = "embedded", dtype: torch.dtype = torch.float32) -> MotionCacheSkyReelsPipeline:
    """Load a ready-to-call pipeline.

    Args:
        model: ``"embedded"`` (the tiny model shipped in the package) or the path of a
            diffusers SkyReels-V2 DF folder, e.g. a local copy of
            ``Skywork/SkyReels-V2-DF-1.3B-540P-Diffusers``.
        dtype: weights dtype. The embedded weights ship in fp16 and run in float32.

    Returns:
        A :class:`MotionCacheSkyReelsPipeline` (a ``SkyReelsV2DiffusionForcingPipeline``).
    """
    path = resolve_model_path(model)
    index = json.loads((path / "model_index.json").read_text())
    extra = {} if index.get("_class_name") == MotionCacheSkyReelsPipeline.__name__ else SKYREELS_DF_DEFAULTS
    pipe = MotionCacheSkyReelsPipeline.from_pretrained(path, dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    register_diffusers_block_metadata()
    return pipe
