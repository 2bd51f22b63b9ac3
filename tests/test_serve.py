"""``motioncache serve``: the real vLLM server in a subprocess (the session's, conftest.served).

Checks the HTTP surface end to end: ``POST /v1/videos/generations`` (the synchronous form of the endpoint plugin), ``POST /pooling``
(IO processor), 4xx answers for bad requests with the server still serving afterwards,
and the cache figures on ``/metrics``.
"""

from __future__ import annotations

import base64
import io
import subprocess

import numpy as np
import pytest

pytest.importorskip("vllm")

from conftest import SERVER_KEY  # noqa: E402

from motioncache_vllm.vllm_plugin.server_process import (  # noqa: E402
    get_text,
    motioncache_command,
    post_json,
)

pytestmark = pytest.mark.slow

POOL_MIB = 64  # = conftest.SERVER_POOL_MIB
SYNC = "/v1/videos/generations"  # the synchronous one-call form (the OpenAI flow is tests/test_videos_api.py)
REQUEST = {"prompt": "a red circle moves right slowly", "num_frames": 17, "num_inference_steps": 4, "seed": 3}


def post(url: str, body) -> tuple[int, dict]:
    return post_json(url, body, headers={"Authorization": f"Bearer {SERVER_KEY}"})


@pytest.fixture(scope="module")
def server(served):
    """The session's server (conftest.served, shared with test_guard.py and test_videos_api.py)."""
    assert served.ready_line == f"motioncache: serving embedded on {served.url} (cache policy motion)"
    assert sum(line.startswith("motioncache: serving") for line in served.log_lines()) == 1
    return served.url


def decode_mp4(b64: str) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(io.BytesIO(base64.b64decode(b64)), extension=".mp4", plugin="pyav"))


def test_videos_endpoint_returns_mp4_and_stats(server):
    status, body = post(f"{server}{SYNC}", REQUEST)
    assert status == 200, body
    assert {"id", "video", "stats"} <= body.keys()
    video = decode_mp4(body["video"])
    assert video.shape[0] == 17 and video.shape[-1] == 3
    stats = body["stats"]
    assert stats["policy"] == "motion"  # the server's --cache-policy default
    assert 0 < stats["token_steps_computed"] <= stats["token_steps_total"]
    assert stats["pool_budget_bytes"] == POOL_MIB * 2**20


def test_a_request_joins_while_a_lone_one_runs(served):
    """A request sent while another runs alone starts before that one ends: the engine does not
    give a lone request its whole prompt (its whole video) in one engine step."""
    import threading
    import time

    server = served.url
    answers = {}

    def send(name: str, body: dict) -> None:
        answers[name] = post(f"{server}{SYNC}", body)

    # 48 steps (~100 engine steps): seconds of engine time however fast the machine; the second
    # goes as soon as the first is admitted, not after a fixed sleep (12 steps once ended first)
    first = threading.Thread(target=send, args=("first", {**REQUEST, "num_inference_steps": 48, "seed": 31}))
    first.start()
    deadline = time.monotonic() + 60
    while served.metrics().get("motioncache_admitted_bytes", 0.0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    send("second", {**REQUEST, "seed": 32})
    first.join()
    (s1, a1), (s2, a2) = answers["first"], answers["second"]
    assert s1 == 200 and s2 == 200, (a1, a2)
    steps1, steps2 = a1["stats"]["engine_steps"], a2["stats"]["engine_steps"]
    assert len(set(steps1)) > 1  # the lone request advanced over several engine steps
    assert min(steps2) < max(steps1)  # the second joined while the first ran


def test_pooling_endpoint_same_video(server):
    _, direct = post(f"{server}{SYNC}", REQUEST)
    status, body = post(f"{server}/pooling", {"model": "embedded", "data": REQUEST})
    assert status == 200, body
    data = body["data"]
    assert data["num_frames"] == 17
    assert data["frames_sha256"] == direct["frames_sha256"]  # same request, same pixels, either route


@pytest.mark.parametrize(
    "body, message",
    [
        ({**REQUEST, "fps": 8}, "unknown field `fps`"),
        ({**REQUEST, "num_frames": 16}, "4k+1"),
        ({**REQUEST, "num_frames": "17"}, "Expected `int | null`, got `str` - at `$.num_frames`"),
        ({**REQUEST, "height": 100_000}, "<= 2048 - at `$.height`"),
        ({**REQUEST, "cache": {"policy": "fast"}}, "unknown cache policy 'fast'"),
        ({"num_frames": 17}, "missing required field `prompt`"),
        (b"{not json", "not JSON"),
        ([REQUEST], "expected a JSON object"),
    ],
)
def test_bad_request_is_4xx_with_message(server, body, message):
    status, answer = post(f"{server}{SYNC}", body)
    assert 400 <= status < 500
    assert message in answer["error"]["message"]


def test_bad_pooling_request_is_4xx(server):
    status, answer = post(f"{server}/pooling", {"model": "embedded", "data": {**REQUEST, "num_frames": 16}})
    assert status == 400 and "4k+1" in answer["error"]["message"]


def test_server_keeps_serving_after_bad_requests(server):
    assert post(f"{server}{SYNC}", {**REQUEST, "fps": 8})[0] == 400
    status, body = post(f"{server}{SYNC}", {**REQUEST, "seed": 4, "cache": {"policy": "none"}})
    assert status == 200, body
    assert body["stats"]["policy"] == "none"
    assert decode_mp4(body["video"]).shape[0] == 17


def test_metrics_show_cache_figures(server):
    _, body = post(f"{server}{SYNC}", REQUEST)
    text = get_text(f"{server}/metrics")
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("motioncache_") and " " in line
    }
    assert values["motioncache_token_steps_total"] >= body["stats"]["token_steps_total"]
    assert 0 < values["motioncache_token_steps_computed_total"] <= values["motioncache_token_steps_total"]
    assert values["motioncache_pool_budget_bytes"] == POOL_MIB * 2**20
    assert values["motioncache_pool_peak_bytes"] > 0
    assert "motioncache_pool_evictions_total" in values and "motioncache_pool_in_use_bytes" in values


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cache-policy", "fast"], "unknown cache policy 'fast'"),
        (["--model", "/nonexistent/model"], "does not exist"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message):
    result = subprocess.run([*motioncache_command(), "serve", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert message in result.stderr
