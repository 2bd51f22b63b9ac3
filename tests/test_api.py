"""The one-call diffusers-style API and calibration, on the embedded model."""

import json

import numpy as np
import pytest
import torch

import motioncache_vllm
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.policies import FlowCacheConfig, MotionConfig
from motioncache_vllm.runtime.calibrate import calibrate, save_calibration, skip_sensitivity
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.video_io import to_uint8

KW = dict(num_frames=17, num_inference_steps=10)


def test_enable_routes_calls_through_the_cache_and_disable_restores(embedded_pipe):
    pipe = embedded_pipe
    motioncache_vllm.enable(pipe, MotionConfig(threshold=2.0))
    try:
        with pytest.raises(RuntimeError, match="already enabled"):
            motioncache_vllm.enable(pipe)
        cached = pipe("a red circle moves right", generator=torch.Generator().manual_seed(4), **KW).frames[0]
        stats = pipe.motioncache_stats
        assert stats["token_steps_computed"] < stats["token_steps_total"]
    finally:
        motioncache_vllm.disable(pipe)
    # the same request through generate_video gives the same video
    ref = generate_video(
        pipe,
        GenerationRequest(prompt="a red circle moves right", seed=4, **{"num_frames": 17, "num_inference_steps": 10}),
        cache=CacheConfig.decode(policy="motion", policy_config={"threshold": 2.0}),
    )
    assert np.abs((cached * 255).round().astype(int) - ref.frames.astype(int)).max() <= 1
    torch.manual_seed(0)
    stock = pipe("a red circle moves right", output_type="np", **KW).frames
    assert stock.shape == (1, 17, 64, 64, 3)


def test_enable_picks_policy_from_config_class(embedded_pipe):
    motioncache_vllm.enable(embedded_pipe, FlowCacheConfig(threshold=0.2), tile=2)
    try:
        assert embedded_pipe._motioncache.policy == FlowCacheConfig(threshold=0.2)
        assert embedded_pipe._motioncache.pool.tile == 2
    finally:
        motioncache_vllm.disable(embedded_pipe)


def test_enable_rejects_what_is_not_a_skyreels_df_pipeline():
    class NotOurs:
        pass

    with pytest.raises(TypeError, match="SkyReelsV2DiffusionForcingPipeline"):
        motioncache_vllm.enable(NotOurs())


@pytest.fixture(scope="module")
def stock_pipe(tiny_pipe):
    """The stock diffusers class on the tiny random components, without tokenizer or text encoder."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None,
        text_encoder=None,
        transformer=tiny_pipe.transformer,
        vae=tiny_pipe.vae,
        scheduler=tiny_pipe.scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_call(pipe, **overrides):
    """A long-video call in the stock signature: prompt embeddings, 2 windows (the second
    starting from a re-noised 2-latent-frame overlap), ar_step 2, causal blocks of 2."""
    g = torch.Generator().manual_seed(7)
    dim = pipe.transformer.config.text_dim
    kwargs = (
        dict(
            prompt=None,
            prompt_embeds=torch.randn(1, 8, dim, generator=g),
            negative_prompt_embeds=torch.randn(1, 8, dim, generator=g),
            height=64,
            width=64,
            num_frames=37,
            num_inference_steps=6,
            guidance_scale=5.0,
            base_num_frames=21,
            overlap_history=5,
            addnoise_condition=20,
            ar_step=2,
            causal_block_size=2,
            generator=torch.Generator().manual_seed(3),
        )
        | overrides
    )
    torch.manual_seed(0)  # the stock loop re-noises the overlap from the global RNG
    return to_uint8(pipe(**kwargs).frames[0])


def test_enable_in_place_on_a_stock_pipeline_with_the_stock_long_video_call(stock_pipe):
    from motioncache_vllm.config import NoneConfig
    from motioncache_vllm.metrics import psnr_db

    stock = stock_call(stock_pipe)
    assert stock.shape == (37, 64, 64, 3)
    motioncache_vllm.enable(stock_pipe, NoneConfig())
    try:
        exact = stock_call(stock_pipe)  # the same schedule, no skipping: equal up to float reassociation
        stats = stock_pipe.motioncache_stats
    finally:
        motioncache_vllm.disable(stock_pipe)
    assert stats["windows"] == 2 and stats["skipped_steps"] == stats["partial_steps"] == 0
    assert psnr_db(exact, stock) > 40
    motioncache_vllm.enable(stock_pipe, MotionConfig(threshold=0.3, warmup_steps=1, phase1_updates=1))
    try:
        cached = stock_call(stock_pipe)
        stats = stock_pipe.motioncache_stats
    finally:
        motioncache_vllm.disable(stock_pipe)
    assert stats["token_steps_computed"] < stats["token_steps_total"]  # the cache engaged
    assert psnr_db(cached, stock) >= 25
    after = stock_call(stock_pipe)
    assert np.array_equal(after, stock)  # disable() restores the stock output bit for bit
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    assert type(stock_pipe) is SkyReelsV2DiffusionForcingPipeline  # the stock class again


@pytest.mark.parametrize("ar_step", [0, 6])
def test_enabled_stock_pipeline_short_video_sync_and_pure_ar(stock_pipe, ar_step):
    from motioncache_vllm.config import NoneConfig
    from motioncache_vllm.metrics import psnr_db

    kw = dict(num_frames=21, base_num_frames=21, overlap_history=None, ar_step=ar_step)
    stock = stock_call(stock_pipe, **kw)
    motioncache_vllm.enable(stock_pipe, NoneConfig())
    try:
        enabled = stock_call(stock_pipe, **kw)
    finally:
        motioncache_vllm.disable(stock_pipe)
    assert psnr_db(enabled, stock) > 40


def test_what_cannot_be_cached_runs_the_stock_loop_with_one_warning(stock_pipe):
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(i)
        return {}

    kw = dict(num_frames=21, base_num_frames=21, overlap_history=None, callback_on_step_end=callback)
    stock = stock_call(stock_pipe, **kw)
    motioncache_vllm.enable(stock_pipe, MotionConfig())
    try:
        with pytest.warns(UserWarning, match="callback_on_step_end") as record:
            out = stock_call(stock_pipe, **kw)
    finally:
        motioncache_vllm.disable(stock_pipe)
    assert len([w for w in record if "MotionCache" in str(w.message)]) == 1
    assert np.array_equal(out, stock) and seen


def test_configs_are_exported_at_the_top_level():
    from motioncache_vllm.config import PoolConfig as P

    assert motioncache_vllm.MotionConfig is MotionConfig and motioncache_vllm.PoolConfig is P
    assert motioncache_vllm.CacheConfig is CacheConfig


def test_calibration_fits_and_is_picked_up(embedded_pipe, tmp_path):
    record = calibrate(embedded_pipe, ["a red circle moves right"], degree=2, num_frames=17, steps=(6, 12))
    assert record["samples"] > 10 and 1 <= record["degree"] <= 2
    assert len(record["coefficients"]) == record["degree"] + 1 and record["steps"] == [6, 12]
    lo, hi = record["x_range"]
    grid = np.poly1d(record["coefficients"])(np.linspace(lo, hi, 64))
    assert np.all(np.diff(grid) >= -1e-9)  # never decreasing where it was fitted
    assert np.isfinite(record["coefficients"]).all() and record["y_mean"] > 0
    path = save_calibration(record, tmp_path)
    from motioncache_vllm.policies.calibration import load_model_calibration

    coefficients, fit_range, mag_ratios, guided_change, sensitivity = load_model_calibration(tmp_path)
    assert coefficients == tuple(json.loads(path.read_text())["coefficients"])
    # steperror's measured schedule: one positive change per step, each chunk's curve of mean 1
    assert sorted(guided_change) == [6, 12] and all(len(guided_change[n]) == n for n in (6, 12))
    for curve in guided_change.values():
        assert curve[0] == curve[1] and min(curve) > 0 and abs(sum(curve[1:]) / (len(curve) - 1) - 1) < 1e-3
    # MagCache ratios: one per step of each schedule, the first 1 by definition, all near 1
    assert sorted(mag_ratios) == [6, 12] and all(len(mag_ratios[n]) == n for n in (6, 12))
    assert all(r[0] == 1.0 and all(0.3 < x < 3 for x in r) for r in mag_ratios.values())
    assert fit_range == (lo, hi)
    assert sensitivity is None  # measured only on request (slow)
    # the skip sensitivity: one run per skipped step; an unskipped run would give the reference, ratio 0
    curve = skip_sensitivity(embedded_pipe, ["a red circle moves right"], 6, num_frames=17)
    assert len(curve) == 6 and curve[0] == curve[1] == curve[2] and min(curve) > 0
    assert abs(sum(curve[2:]) / 4 - 1) < 1e-3 and max(curve) > 1.05 * min(curve)
    record["skip_sensitivity"] = {"6": curve}
    save_calibration(record, tmp_path)
    assert load_model_calibration(tmp_path).skip_sensitivity == {6: tuple(curve)}
