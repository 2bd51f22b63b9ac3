"""A vLLM model folder for the video model.

vLLM loads a model from a folder holding a ``config.json`` that HF ``AutoConfig`` reads,
a tokenizer and weights. The video model's real weights are a diffusers pipeline, which
the vLLM-side model loads itself from the ``motioncache_pipeline`` field; the folder only
carries the small token-side shim (embedding + one attention layer) that makes it a
regular vLLM decoder-attention pooling model::

    <folder>/
      config.json           model_type llama (any AutoConfig type with custom fields works),
                            architectures [MotionCacheVideoModel], io_processor_plugin,
                            motioncache_pipeline: a shipped model name | /path/to/diffusers/folder
      tokenizer.json ...    the pipeline's tokenizer files (vLLM wants a tokenizer; prompts
                            arrive as token ids, so it is never used to encode)
      model.safetensors     the shim's weights (deterministic, a few hundred KiB)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from motioncache_vllm.vllm_plugin import ARCHITECTURE, IO_PROCESSOR_NAME

FORMAT_VERSION = 1
HIDDEN = 64
"""Shim width = one head of 64: the CPU attention backend supports head dim 64, not 16."""
VOCAB = 256
"""One token id per byte: requests travel as their JSON bytes."""
MAX_REQUEST_BYTES = 4096
"""max_model_len of the folder: the longest encoded request (a 1000-char caption fits)."""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "motioncache_vllm" / "vllm-models"


def model_config(pipeline: str) -> dict:
    """The ``config.json`` of a folder serving ``pipeline`` ("embedded" or a diffusers folder)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "torch_dtype": "float32",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": HIDDEN,
        "max_position_embeddings": MAX_REQUEST_BYTES,
        "tie_word_embeddings": False,
        "io_processor_plugin": IO_PROCESSOR_NAME,
        "motioncache_pipeline": pipeline,
        "motioncache_format_version": FORMAT_VERSION,
    }


def shim_weights() -> dict[str, torch.Tensor]:
    """Weights of the token shim; fixed seed so every build of a folder is byte-identical."""
    g = torch.Generator().manual_seed(0)
    return {
        "embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=g) * 0.02,
        "qkv_proj.weight": torch.randn(3 * HIDDEN, HIDDEN, generator=g) * 0.02,
    }


def build_model_dir(pipeline: str | Path = "embedded", root: str | Path | None = None) -> Path:
    """Create (or reuse) the vLLM model folder of ``pipeline``; returns its path.

    Args:
        pipeline: a shipped model's name (``"embedded"``, ``"embedded-textured"``) or the path
            of a diffusers SkyReels-V2 DF folder (stored absolute, so the folder works from any
            working directory).
        root: where folders are kept; default ``$XDG_CACHE_HOME/motioncache_vllm/vllm-models``.

    The folder name is a hash of its config, so the same pipeline maps to the same folder
    and a rebuild is a no-op. It is written under a temporary name and renamed, so a
    half-written folder is never picked up.
    """
    from safetensors.torch import save_file

    from motioncache_vllm.models.folders import SHIPPED_MODELS, resolve_model_path

    source = resolve_model_path(pipeline)  # fails now, not inside a vLLM worker
    # a shipped model by name (found in the installed package wherever it is), others by absolute path
    spec = str(pipeline) if str(pipeline) in SHIPPED_MODELS else str(source.resolve())
    config = model_config(spec)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root) if root is not None else default_cache_root()
    target = root / f"motioncache-video-{digest}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    try:
        shutil.copytree(source / "tokenizer", tmp, dirs_exist_ok=True)
        tokenizer_config_path = tmp / "tokenizer_config.json"
        if tokenizer_config_path.is_file():  # its short text-encoder limit would cap the prompt window
            tokenizer_config = json.loads(tokenizer_config_path.read_text())
            tokenizer_config["model_max_length"] = MAX_REQUEST_BYTES
            tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
        save_file(shim_weights(), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process built it first: theirs is identical
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
