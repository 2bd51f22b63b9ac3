"""OpenAI's Videos API on a real ``motioncache serve``, driven by the real ``openai`` client.

One server for the session (``conftest.served``, shared with test_serve.py and test_guard.py); small
requests (17 frames, 3 steps). Timing claims (extension vs whole length, time to first
chunk) live in ``benchmarks/serving_api.py``, not here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import warnings

import numpy as np
import pytest

from conftest import SERVER_KEY

openai = pytest.importorskip("openai")
pytest.importorskip("vllm")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EXTRA = {"num_inference_steps": 3, "seed": 3}


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key=SERVER_KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def finished(client):
    """One completed 1-second (17-frame) video, made with create_and_poll."""
    video = client.videos.create_and_poll(
        prompt="a red circle moves right slowly", seconds="1", size="64x64", extra_body=EXTRA, poll_interval_ms=100
    )
    assert video.status == "completed", video.error
    return video


def decode_mp4(data: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(io.BytesIO(data), extension=".mp4", plugin="pyav"))


def test_create_and_poll_then_download(client, finished):
    assert finished.progress == 100 and finished.seconds == "1" and finished.size == "64x64"
    extra = finished.model_extra["motioncache"]
    assert extra["num_frames"] == 17 and extra["stats"]["policy"] == "motion"
    assert 0 < extra["stats"]["token_steps_computed"] <= extra["stats"]["token_steps_total"]
    frames = decode_mp4(client.videos.download_content(finished.id).content)
    assert frames.shape == (17, 64, 64, 3)
    from PIL import Image

    thumb = Image.open(io.BytesIO(client.videos.download_content(finished.id, variant="thumbnail").content))
    assert thumb.size == (64, 64)
    sheet = Image.open(io.BytesIO(client.videos.download_content(finished.id, variant="spritesheet").content))
    assert sheet.size == (4 * 64, 4 * 64)  # 16 frames, 4 per row


def test_retrieve_and_list(client, finished):
    again = client.videos.retrieve(finished.id)
    assert again.status == "completed" and again.progress == 100 and again.completed_at >= again.created_at
    assert again.expires_at > again.completed_at
    assert finished.id in [v.id for v in client.videos.list()]
    # pagination as the client does it: pages of one, followed by `after`
    first = client.videos.list(limit=1, order="asc")
    assert len(first.data) == 1
    ids = [v.id for v in client.videos.list(limit=1, order="asc")]  # auto-pagination over every page
    assert finished.id in ids and len(ids) == len(set(ids))
    assert ids == sorted(ids, key=ids.index) and ids[0] == first.data[0].id
    assert [v.id for v in client.videos.list(order="desc")] == ids[::-1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": "big"}, "WIDTHxHEIGHT"),
        ({"size": "64x9000"}, "<= 2048"),
        ({"seconds": "0"}, "at least"),
        ({"extra_body": {"num_frames": 16}}, "4k+1"),
        ({"extra_body": {"fps": 8}}, "unknown field `fps`"),
        ({"extra_body": {"cache": {"policy": "fast"}}}, "unknown cache policy 'fast'"),
        ({"input_reference": ("ref.png", b"\x89PNG", "image/png")}, "no image conditioning"),
    ],
)
def test_invalid_request_is_bad_request(client, kwargs, message):
    with pytest.raises(openai.BadRequestError) as info:
        client.videos.create(prompt="a blue square", **kwargs)
    assert message in info.value.message


def test_unknown_ids_are_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve("video_nope")
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_nope")
    with pytest.raises(openai.NotFoundError):
        client.videos.delete("video_nope")


def test_delete_then_retrieve_is_not_found(client):
    video = client.videos.create_and_poll(
        prompt="a green triangle", seconds="1", extra_body=EXTRA, poll_interval_ms=100
    )
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert video.id not in [v.id for v in client.videos.list()]


def test_extension_continues_the_stored_video(client, finished):
    # openai 3.57's extend() insists `video` is a file upload, so the id rides in extra_body
    extended = client.videos.extend(
        prompt="the circle turns and moves left",
        seconds="1",
        video=openai.omit,
        extra_body={"video": {"id": finished.id}},
    )
    extended = client.videos.poll(extended.id, poll_interval_ms=100)
    assert extended.status == "completed", extended.error
    extra, base = extended.model_extra["motioncache"], finished.model_extra["motioncache"]
    assert extended.seconds == "2" and extra["num_frames"] == 33 and extra["extended_from_video_id"] == finished.id
    # the stitched video starts with the original's frames, exactly (per-frame hashes of raw frames)
    assert extra["frame_sha256"][:17] == base["frame_sha256"]
    assert extra["frame_sha256"][17:] != base["frame_sha256"][:16]
    assert extra["stats"]["resumed_chunks"] == 2  # continued from the stored state, not regenerated
    assert decode_mp4(client.videos.download_content(extended.id).content).shape[0] == 33
    with pytest.raises(openai.BadRequestError, match="source video"):
        client.videos.extend(
            prompt="x", seconds="1", video=openai.omit, extra_body={"video": {"id": finished.id}, "size": "32x32"}
        )


def test_extension_of_unknown_video_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.videos.extend(prompt="x", seconds="1", video=openai.omit, extra_body={"video": {"id": "video_nope"}})


def test_several_jobs_at_once_all_complete(client):
    jobs = [
        client.videos.create(prompt=p, seconds="1", extra_body={**EXTRA, "seed": i})
        for i, p in enumerate(["a red circle", "a blue square", "a green triangle"])
    ]
    assert all(j.status in ("queued", "in_progress") for j in jobs)
    done = [client.videos.poll(j.id, poll_interval_ms=100) for j in jobs]
    assert [d.status for d in done] == ["completed"] * 3
    assert len({d.model_extra["motioncache"]["frames_sha256"] for d in done}) == 3


def test_progress_of_a_running_job_rises_and_delete_cancels_it(client):
    video = client.videos.create(
        prompt="a yellow star spins", seconds="1", extra_body={"num_inference_steps": 12, "seed": 1}
    )
    seen = []
    while True:
        current = client.videos.retrieve(video.id)
        if current.status == "in_progress":
            seen.append(current.progress)
        if current.status in ("completed", "failed"):
            break
        time.sleep(0.05)
    assert current.status == "completed" and current.progress == 100
    assert seen == sorted(seen) and len(set(seen)) >= 3 and max(seen) < 100
    # a running job deleted: cancelled, gone, and the server keeps serving
    running = client.videos.create(prompt="a long one", seconds="2", extra_body={"num_inference_steps": 30})
    while client.videos.retrieve(running.id).status == "queued":
        time.sleep(0.05)
    assert client.videos.delete(running.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(running.id)
    after = client.videos.create_and_poll(
        prompt="after the cancel", seconds="1", extra_body=EXTRA, poll_interval_ms=100
    )
    assert after.status == "completed"


def test_stream_sends_chunks_as_they_finish(served, client):
    import httpx

    body = {
        "prompt": "a red circle moves right slowly",
        "num_frames": 33,
        "num_inference_steps": 3,
        "seed": 7,
        "stream": True,
    }
    events = []
    with (
        warnings.catch_warnings(),
        httpx.stream("POST", f"{served.url}/v1/videos", json=body, headers=served.auth, timeout=600) as response,
    ):
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:]), time.perf_counter()))
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "video.created" and kinds[-1] == "video.completed"
    chunks = [d for k, d, _ in events if k == "video.chunk"]
    assert len(chunks) == 3  # 33 frames = 9 latent frames = 3 chunks of 3
    assert [c["frame_start"] for c in chunks] == [0, 9, 21] and sum(c["num_frames"] for c in chunks) == 33
    # each chunk is sent when it is denoised, not at the end (the job's progress when it left)
    assert chunks[0]["progress"] < 50 < chunks[1]["progress"] < 99
    frames = b"".join(base64.b64decode(c["frames"]) for c in chunks)
    final = events[-1][1]
    # the streamed raw frames are the final video's, exactly
    assert hashlib.sha256(frames).hexdigest() == final["motioncache"]["frames_sha256"]
    assert client.videos.retrieve(final["id"]).status == "completed"


def test_sync_form_and_openai_flow_make_the_same_video(served, client):
    from motioncache_vllm.vllm_plugin.server_process import post_json

    body = {"prompt": "a blue square bounces", "num_frames": 17, "num_inference_steps": 3, "seed": 11}
    status, answer = post_json(f"{served.url}/v1/videos/generations", body, headers=served.auth)
    assert status == 200 and decode_mp4(base64.b64decode(answer["video"])).shape[0] == 17
    video = client.videos.create_and_poll(
        prompt=body["prompt"], extra_body={k: v for k, v in body.items() if k != "prompt"}, poll_interval_ms=100
    )
    assert video.model_extra["motioncache"]["frames_sha256"] == answer["frames_sha256"]
    assert client.videos.retrieve(answer["id"]).status == "completed"  # the sync form is a job too
