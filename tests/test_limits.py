"""One validation for every entry point (motioncache_vllm.limits) and the server's memory gate."""

from __future__ import annotations

import asyncio
import json
import math

import msgspec
import pytest

from motioncache_vllm.limits import (
    MIB,
    InvalidRequest,
    RequestTooLarge,
    ServeSettings,
    check_finite,
    check_memory,
    check_request,
    json_depth,
    read_geometry,
    request_memory,
)
from motioncache_vllm.models.embedded import EMBEDDED_DIR
from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS


@pytest.fixture(scope="module")
def geometry():
    return read_geometry(EMBEDDED_DIR, SKYREELS_DF_DEFAULTS)


def test_geometry_from_json_matches_the_loaded_pipeline(geometry, embedded_pipe):
    from motioncache_vllm.limits import geometry_of

    assert geometry == geometry_of(embedded_pipe)
    assert geometry.spatial_factor == embedded_pipe.spatial_factor == 8
    assert geometry.temporal_factor == 4 and geometry.causal_block == 3


def test_stock_folder_geometry_takes_the_loader_defaults(tmp_path):
    # a diffusers SkyReels-V2 folder: Wan VAE (8x spatial), no generation defaults in model_index.json
    (tmp_path / "transformer").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SkyReelsV2DiffusionForcingPipeline"}))
    (tmp_path / "transformer" / "config.json").write_text(
        json.dumps(
            {
                "patch_size": [1, 2, 2],
                "num_layers": 30,
                "num_attention_heads": 12,
                "attention_head_dim": 128,
                "ffn_dim": 8960,
                "in_channels": 16,
            }
        )
    )
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"z_dim": 16, "temperal_downsample": [False, True, True]}))
    g = read_geometry(tmp_path, SKYREELS_DF_DEFAULTS)
    assert g.spatial_factor == 16 and g.temporal_factor == 4 and g.causal_block == 3
    assert (g.default_num_frames, g.default_height, g.default_width) == (97, 544, 960)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "   "}, "prompt must not be blank"),
        ({"prompt": "\t\n"}, "prompt must not be blank"),
        ({"height": 68}, "height must be a positive multiple of 8 for this model (e.g. 64 or 72), got 68"),
        ({"height": 65}, "height must be a positive multiple of 8"),
        ({"width": 4}, "width must be a positive multiple of 8 for this model (e.g. 8), got 4"),
        ({"num_frames": 16}, "num_frames must be of the form 4k+1 (e.g. 13 or 17), got 16"),
        ({"guidance_scale": math.nan}, "guidance_scale must be a finite number"),
        ({"guidance_scale": math.inf}, "guidance_scale must be a finite number"),
    ],
)
def test_check_request_refuses(geometry, fields, message):
    with pytest.raises(InvalidRequest) as err:
        check_request(geometry, **{"prompt": "a red circle", **fields})
    assert message in str(err.value)


def test_check_request_accepts_a_good_request(geometry):
    check_request(geometry, prompt="a red circle", num_frames=17, height=64, width=72, guidance_scale=5.0)


def test_check_finite_walks_nested_values():
    check_finite({"a": [1.0, {"b": 2}], "c": "x"})
    with pytest.raises(InvalidRequest, match=r"\$\.a\[1\]\.b must be a finite number"):
        check_finite({"a": [1.0, {"b": math.nan}]})


def test_memory_grows_with_the_shape_and_refuses_the_huge_request(geometry):
    small = request_memory(geometry, num_frames=17, height=64, width=64)
    double = request_memory(geometry, num_frames=33, height=64, width=64)
    assert double.kv * 6 == small.kv * 9  # 17 frames: 5 latent frames padded to 2 chunks of 3; 33: 9
    no_cfg = request_memory(geometry, num_frames=17, height=64, width=64, guidance_scale=1.0)
    assert no_cfg.kv * 2 == small.kv  # one CFG branch instead of two
    huge = request_memory(geometry, num_frames=1025, height=2048, width=2048, guidance_scale=5.0)
    assert huge.total > 100 * 2**30  # hundreds of GiB of K/V
    with pytest.raises(RequestTooLarge) as err:
        check_memory(huge, 16 * 2**30)
    text = str(err.value)
    assert f"{huge.total / MIB:,.0f} MiB" in text and "limit of 16,384 MiB" in text
    check_memory(small, 16 * 2**30)


def test_json_depth_scans_without_recursing():
    assert json_depth(b'{"a": [1, {"b": "[[[[ in a string \\" ]"}]}') == 3
    assert json_depth(b"[" * 3000 + b"]" * 3000, limit=32) == 33  # stops counting past the limit
    assert json_depth(b"[" * 10**6) == 33


def test_serve_settings_refuse_bad_values():
    assert ServeSettings.from_additional_config({"cache_policy": "x"}) == ServeSettings()
    for key, value, message in [
        ("serve_memory_budget_mib", math.nan, "positive number"),
        ("serve_memory_budget_mib", -1, "positive number"),
        ("serve_request_timeout_s", 0, "positive number"),
        ("serve_max_body_bytes", 10, ">= 1024"),
        ("serve_max_batch", 0, ">= 1"),
        ("serve_batch_steps", "yes", "Expected `bool`"),
        ("serve_bogus", 1, "unknown field `serve_bogus`"),
    ]:
        with pytest.raises(ValueError, match=message):
            ServeSettings.from_additional_config({key: value})


@pytest.mark.parametrize(
    "config, message",
    [
        ({"cache_tile": -1}, "Expected `int` >= 1 - at cache_tile"),
        ({"cache_tile": 0}, "Expected `int` >= 1"),
        ({"cache_pool_mib": math.nan}, "cache_pool_mib"),
        ({"cache_pool_mib": math.inf}, "cache_pool_mib"),
        ({"cache_pool_mib": -2}, ">= 0.0"),
        ({"cache_eviction": "fifo"}, "cache_eviction"),
        ({"cache_cfg_delta_dtype": "int4"}, "needs cfg_shared"),
    ],
)
def test_engine_settings_refused_at_start_up(config, message):
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    with pytest.raises(ValueError) as err:
        EngineCacheSettings.from_additional_config(config)
    assert message in str(err.value)


def test_memory_gate_admits_within_budget_and_queues_the_rest():
    from motioncache_vllm.vllm_plugin.guard import MemoryGate

    async def scenario() -> list[str]:
        gate, log = MemoryGate(100), []

        async def job(name: str, need: int, hold_s: float) -> None:
            async with gate.hold(need):
                log.append(f"+{name}")
                await asyncio.sleep(hold_s)
            log.append(f"-{name}")

        with pytest.raises(RequestTooLarge):
            async with gate.hold(101):
                pass
        a = asyncio.create_task(job("a", 60, 0.05))
        await asyncio.sleep(0)
        b = asyncio.create_task(job("b", 60, 0.01))  # waits for a
        c = asyncio.create_task(job("c", 30, 0.01))  # fits now, but waits behind b (first come first served)
        await asyncio.sleep(0.01)
        assert gate.waiting == 2 and gate.admitted_bytes == 60
        d = asyncio.create_task(job("d", 10, 0.01))
        await asyncio.sleep(0)
        d.cancel()  # a waiter that gives up leaves nothing behind
        await asyncio.gather(a, b, c, return_exceptions=True)
        assert gate.admitted_bytes == 0 and gate.waiting == 0
        return log

    log = asyncio.run(scenario())
    assert log.index("-a") < log.index("+b") < log.index("+c")


def test_decoded_request_json_refuses_nan_literals():
    # the HTTP guard decodes bodies strictly: NaN/Infinity are not JSON
    for body in (
        b'{"prompt": "x", "guidance_scale": NaN}',
        b'{"prompt": "x", "seed": Infinity}',
        b'{"prompt": "x", "guidance_scale": 1e999}',
    ):
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(body)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "  "}, "prompt must not be blank"),
        ({"height": 68}, "multiple of 8"),
        ({"guidance_scale": math.nan}, "finite"),
    ],
)
def test_library_path_refuses_the_same_requests(embedded_pipe, fields, message):
    from motioncache_vllm.config import GenerationRequest
    from motioncache_vllm.runtime.generate import generate_video

    with pytest.raises(InvalidRequest, match=message):
        generate_video(embedded_pipe, GenerationRequest(**{"prompt": "a red circle", "num_frames": 17, **fields}))


def test_engine_threads_environment():
    """motioncache serve's thread defaults: every core bound to the worker unless
    OMP_NUM_THREADS asks for N (then N threads, unbound); a user's vLLM binding stands; the
    other processes get one OpenMP thread and the engine core waits asleep."""
    from motioncache_vllm.vllm_plugin.launcher import engine_threads_environment

    quiet = {"OMP_NUM_THREADS": "1", "MOTIONCACHE_SHM_BUSY_LOOP_S": "0"}
    for given, expected in [
        ({}, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **quiet}),
        ({"OMP_NUM_THREADS": "1"}, {"VLLM_CPU_OMP_THREADS_BIND": "nobind", **quiet}),
        ({"OMP_NUM_THREADS": "3"}, {**quiet, "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "3"}),
        ({"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "0", **quiet}),
        ({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "1", **quiet}),
        (
            {"MOTIONCACHE_SHM_BUSY_LOOP_S": "1"},
            {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", **quiet, "MOTIONCACHE_SHM_BUSY_LOOP_S": "1"},
        ),
    ]:
        env = dict(given)
        engine_threads_environment(env)
        assert env == expected, given


def test_poll_after_is_half_the_estimated_remaining_time():
    """openai-poll-after-ms of an unfinished job: the fixed default before its first unit,
    then half its remaining time at its pace so far, clamped, so waiting clients poll rarely
    while the engine computes and closely once the video is nearly done."""
    pytest.importorskip("fastapi")
    from motioncache_vllm.vllm_plugin.videos_api import POLL_AFTER_MS, POLL_AFTER_RANGE_MS, poll_after_ms

    low, high = POLL_AFTER_RANGE_MS
    assert poll_after_ms(0, 22, None) == POLL_AFTER_MS
    assert poll_after_ms(0, 22, 3.0) == POLL_AFTER_MS  # started, no unit done: no pace yet
    assert poll_after_ms(11, 22, 1.0) == 500  # 1 s left -> ask again in 0.5 s
    assert poll_after_ms(20, 22, 2.0) == 100  # 0.2 s left
    assert poll_after_ms(22, 22, 3.0) == low  # all units done, the answer is being built
    assert poll_after_ms(1, 22, 1.0) == high  # 21 s left: at most the bound
