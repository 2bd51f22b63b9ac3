import numpy as np
import pytest
import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline

from motioncache_vllm.config import GenerationRequest
from motioncache_vllm.runtime.generate import generate_video

FAST = dict(num_inference_steps=3)


def test_embedded_is_a_diffusers_skyreels_df_pipeline(embedded_pipe):
    assert isinstance(embedded_pipe, SkyReelsV2DiffusionForcingPipeline)
    cfg = embedded_pipe.transformer.config
    assert cfg.num_layers >= 6 and cfg.num_frame_per_block > 1  # block-causal
    assert embedded_pipe.config.default_height // embedded_pipe.spatial_factor >= 8


@pytest.mark.parametrize("frames", [17, 33])
def test_exact_frame_count(embedded_pipe, frames):
    out = generate_video(embedded_pipe, GenerationRequest(prompt="a red circle moves right", num_frames=frames, **FAST))
    assert out.frames.shape == (frames, 64, 64, 3) and out.frames.dtype == np.uint8


def test_same_seed_same_video_other_seed_differs(embedded_pipe):
    req = GenerationRequest(prompt="a blue square moves up", num_frames=17, seed=11, **FAST)
    a, b = generate_video(embedded_pipe, req), generate_video(embedded_pipe, req)
    assert np.array_equal(a.frames, b.frames)
    c = generate_video(
        embedded_pipe, GenerationRequest(prompt="a blue square moves up", num_frames=17, seed=12, **FAST)
    )
    assert not np.array_equal(a.frames, c.frames)


def test_callable_like_any_diffusers_pipeline(embedded_pipe):
    torch.manual_seed(0)
    out = embedded_pipe("a green circle moves left", num_frames=17, num_inference_steps=2, output_type="np")
    assert out.frames.shape == (1, 17, 64, 64, 3)


def test_diffusers_first_block_cache_runs_on_it(embedded_pipe):
    from diffusers.hooks import FirstBlockCacheConfig

    embedded_pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    try:
        req = GenerationRequest(prompt="a red circle moves right", num_frames=17, **FAST)
        out = generate_video(embedded_pipe, req, runtime="vanilla")
        assert np.isfinite(out.frames.astype(float)).all()
        with pytest.raises(ValueError, match="disable_cache"):  # two caches on one model: refused
            generate_video(embedded_pipe, req)
    finally:
        embedded_pipe.transformer.disable_cache()
