"""The fleet's settings and command line, without a cluster (fast)."""

from __future__ import annotations

import msgspec
import pytest

from motioncache_vllm.fleet.cli import _flag_value
from motioncache_vllm.fleet.messages import Checkpoint, WorkEvent, WorkOrder, decode, encode
from motioncache_vllm.fleet.router import FleetConfig
from motioncache_vllm.fleet.server import engine_argv


def test_fleet_config_rejects_nonsense_with_a_clear_error():
    assert FleetConfig().max_attempts >= 1
    for bad in ({"workers": 0}, {"cpus_per_worker": 0}, {"max_attempts": 0}, {"slots_per_worker": 0}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, FleetConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"bogus": 1}, FleetConfig)


def test_engine_argv_is_serve_argv_without_the_front_end_part():
    from motioncache_vllm.vllm_plugin import launcher

    argv = launcher.serve_argv(
        "/m",
        host="127.0.0.1",
        port=9,
        served_model_name="embedded",
        extra=["--max-num-seqs", "8"],
        cache_policy="motion",
        cache_pool_mib=4,
    )
    engine = engine_argv(argv)
    assert "--host" not in engine and "--port" not in engine and "/m" not in engine
    assert engine[-4:] == ["--cache-policy", "motion", "--additional-config", '{"cache_pool_mib": 4}']
    assert _flag_value(engine, "--max-num-seqs") == "8"
    assert _flag_value(["--max_num_seqs=2"], "--max-num-seqs") == "2"
    with pytest.raises(ValueError):
        engine_argv(["serve", "/m", "--port", "9"])


def test_messages_round_trip_as_msgpack():
    order = WorkOrder(request_id="v1", attempt=1, request=b'{"prompt":"x"}')
    assert decode(encode(order), WorkOrder) == order
    event = WorkEvent(kind="chunk", worker_id=1, chunk=2, has_checkpoint=True, nbytes=10, units_done=5, units_total=9)
    assert decode(encode(event), WorkEvent) == event
    ckpt = Checkpoint(chunk=1, units_done=3, state=b"\x00\x01")
    assert decode(encode(ckpt), Checkpoint) == ckpt


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ray-address", "auto"], "need --workers N"),
        (["--fleet-config", "{}"], "need --workers N"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--workers", "2", "--fleet-config", '{"bogus": 1}'], "unknown field `bogus`"),
        (["--workers", "2", "--fleet-config", "[1]"], "JSON object"),
    ],
)
def test_serve_workers_flags_fail_clearly(args, needle, tmp_path):
    from typer.testing import CliRunner

    from motioncache_vllm.cli import app
    from motioncache_vllm.vllm_plugin.server_process import free_port

    result = CliRunner().invoke(
        app, ["serve", "--port", str(free_port()), *args], env={"XDG_CACHE_HOME": str(tmp_path)}
    )
    assert result.exit_code != 0
    assert needle in result.output + str(result.exception or "")
