import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def embedded_pipe():
    """The shipped embedded pipeline, loaded once per test session."""
    from motioncache_vllm.models.loading import load_pipeline

    return load_pipeline("embedded")


@pytest.fixture(scope="module")
def tiny_pipe():
    """A tiny random SkyReels-V2 config nobody tuned: 3 blocks, 2x32 heads, 2 frames per block."""
    from motioncache_vllm.data.procedural import ClipGenerator
    from motioncache_vllm.models.latent import fit_linear_latent
    from motioncache_vllm.models.loading import build_pipeline

    torch.manual_seed(0)
    vae = fit_linear_latent(np.stack([ClipGenerator(7, num_frames=9).clip(i).frames for i in range(8)]))
    pipe = build_pipeline(
        vae,
        transformer_overrides=dict(num_layers=3, num_attention_heads=2, attention_head_dim=32, ffn_dim=128,
                                   num_frame_per_block=2),
        default_num_inference_steps=8,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
