"""The models shipped in the package, by name: folders, architecture and how they were trained."""

import json

import pytest

from motioncache_vllm.models.embedded import EMBEDDED_DIR, EMBEDDED_TEXTURED_DIR
from motioncache_vllm.models.folders import SHIPPED_MODELS, ModelNotFoundError, resolve_model_path


def test_names_resolve_to_the_shipped_folders_and_paths_still_work():
    assert resolve_model_path("embedded") == EMBEDDED_DIR
    assert resolve_model_path("embedded-textured") == EMBEDDED_TEXTURED_DIR
    assert resolve_model_path(str(EMBEDDED_TEXTURED_DIR)) == EMBEDDED_TEXTURED_DIR
    assert set(SHIPPED_MODELS) == {"embedded", "embedded-textured"}
    with pytest.raises(ModelNotFoundError, match="not a diffusers pipeline folder"):
        resolve_model_path("embedded-texture")  # a typo is a path that does not exist


def test_textured_model_is_the_embedded_architecture_fine_tuned_on_the_textured_mix():
    for part in ("transformer/config.json", "text_encoder/config.json", "tokenizer/tokenizer.json", "vae/config.json"):
        a = json.loads((EMBEDDED_DIR / part).read_text())
        b = json.loads((EMBEDDED_TEXTURED_DIR / part).read_text())
        for key in ("_name_or_path", "_diffusers_version", "transformers_version"):  # who wrote it, not what
            a.pop(key, None), b.pop(key, None)
        assert a == b, part  # same architecture, same tokenizer, same fixed latent
    info = json.loads((EMBEDDED_TEXTURED_DIR / "training.json").read_text())
    assert info["data_mix"] == "textured" and info["step"] > 0
    assert info["init_from"] == "embedded"  # fine-tuned from the shipped weights
    # fp16 like the shipped weights: about the same size on disk
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert abs(size(EMBEDDED_TEXTURED_DIR) - size(EMBEDDED_DIR)) < 0.05 * size(EMBEDDED_DIR)


def test_vllm_model_folder_names_a_shipped_model_by_name_and_reads_its_geometry(tmp_path):
    from motioncache_vllm.limits import read_geometry
    from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS
    from motioncache_vllm.vllm_plugin import build_model_dir

    folders = {name: build_model_dir(name, root=tmp_path) for name in SHIPPED_MODELS}
    assert len(set(folders.values())) == len(SHIPPED_MODELS)  # one folder per model
    for name, folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        assert config["motioncache_pipeline"] == name  # by name: the folder survives a reinstall elsewhere
        # what the server's front end reads from it (vllm_plugin/processor.py)
        assert (
            read_geometry(resolve_model_path(config["motioncache_pipeline"]), SKYREELS_DF_DEFAULTS).spatial_factor > 0
        )
    # a diffusers folder given by path is stored absolute
    config = json.loads((build_model_dir(str(EMBEDDED_TEXTURED_DIR), root=tmp_path) / "config.json").read_text())
    assert config["motioncache_pipeline"] == str(EMBEDDED_TEXTURED_DIR.resolve())
