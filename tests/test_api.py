"""The one-call diffusers-style API and calibration, on the embedded model."""

import json

import numpy as np
import pytest
import torch

import motioncache_vllm
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.policies import FlowCacheConfig, MotionConfig
from motioncache_vllm.runtime.calibrate import calibrate, save_calibration
from motioncache_vllm.runtime.generate import generate_video

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
        with pytest.raises(ValueError, match="disable"):
            pipe(["two", "prompts"], **KW)
    finally:
        motioncache_vllm.disable(pipe)
    # the same request through generate_video gives the same video
    ref = generate_video(
        pipe, GenerationRequest(prompt="a red circle moves right", seed=4, **{"num_frames": 17, "num_inference_steps": 10}),
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


def test_enable_rejects_stock_pipelines():
    class NotOurs:
        pass

    with pytest.raises(TypeError, match="from_pipe"):
        motioncache_vllm.enable(NotOurs())


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

    coefficients, fit_range, mag_ratios = load_model_calibration(tmp_path)
    assert coefficients == tuple(json.loads(path.read_text())["coefficients"])
    # MagCache ratios: one per step of each schedule, the first 1 by definition, all near 1
    assert sorted(mag_ratios) == [6, 12] and all(len(mag_ratios[n]) == n for n in (6, 12))
    assert all(r[0] == 1.0 and all(0.3 < x < 3 for x in r) for r in mag_ratios.values())
    assert fit_range == (lo, hi)
