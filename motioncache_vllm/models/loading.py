"""Build or load the pipeline: the embedded weights, a diffusers folder, or a fresh tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import motioncache_vllm.models.latent  # noqa: F401  (diffusers resolves the VAE class through sys.modules)
from motioncache_vllm.models.embedded import (
    EMBEDDED_DIR,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
)
from motioncache_vllm.models.pipeline import MotionCacheSkyReelsPipeline
from motioncache_vllm.models.wan_adapter import register_diffusers_block_metadata

# Generation defaults of the public SkyReels-V2 DF 1.3B 540P checkpoint (its model card):
# used when a diffusers folder that is not ours is loaded.
SKYREELS_DF_DEFAULTS = dict(
    default_height=544,
    default_width=960,
    default_num_frames=97,
    default_num_inference_steps=30,
    default_guidance_scale=6.0,
    default_max_sequence_length=512,
)


class ModelNotFoundError(FileNotFoundError):
    """The model path does not hold a diffusers pipeline folder."""


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


def resolve_model_path(model: str | Path) -> Path:
    path = EMBEDDED_DIR if str(model) == "embedded" else Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        if str(model) == "embedded":
            raise ModelNotFoundError(f"the embedded weights are missing from {path}; reinstall the package")
        raise ModelNotFoundError(f"model path {path} is not a diffusers pipeline folder (no model_index.json)")
    return path


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
