"""Model folders by name or path, and the defaults of stock SkyReels-V2 DF folders.

Torch-free on purpose: the CLI's input checks and the server's front end read a model's
geometry from its folder's JSON before (or without) importing torch and diffusers.
"""

from __future__ import annotations

from pathlib import Path

from motioncache_vllm.models.embedded import EMBEDDED_DIR, EMBEDDED_TEXTURED_DIR

# models shipped in the package, by name
SHIPPED_MODELS: dict[str, Path] = {"embedded": EMBEDDED_DIR, "embedded-textured": EMBEDDED_TEXTURED_DIR}

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


def resolve_model_path(model: str | Path) -> Path:
    """The folder of ``model``: a name of :data:`SHIPPED_MODELS` (``"embedded"``,
    ``"embedded-textured"``) or a diffusers folder path."""
    shipped = SHIPPED_MODELS.get(str(model))
    path = shipped if shipped is not None else Path(model).expanduser()
    if not (path / "model_index.json").is_file():
        if shipped is not None:
            raise ModelNotFoundError(f"the {model} weights are missing from {path}; reinstall the package")
        raise ModelNotFoundError(f"model path {path} is not a diffusers pipeline folder (no model_index.json)")
    return path
