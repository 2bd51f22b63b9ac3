"""The worker's video sessions: an extension continues the stored state, or regenerates it when lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motioncache_vllm.vllm_plugin.events import WorkerCommand
from motioncache_vllm.vllm_plugin.messages import Continuation, VideoRequest
from motioncache_vllm.vllm_plugin.worker import VideoWorker


def ids(request: VideoRequest) -> torch.Tensor:
    import msgspec

    return torch.tensor(list(msgspec.json.encode(request)))


def frames(payload) -> np.ndarray:
    assert payload.error is None, payload.error
    return np.frombuffer(payload.frames, dtype=np.uint8).reshape(payload.shape)


@pytest.fixture(scope="module")
def worker():
    return VideoWorker("embedded", {"cache_policy": "motion"})


def test_extension_from_the_session_or_regenerated(worker):
    base = worker.run(ids(VideoRequest(prompt="a red circle", num_frames=17, num_inference_steps=3, seed=3, job="v1")))
    assert "v1" in worker.sessions and base.plan.num_frames == 17
    plan = base.plan.extended("the circle turns blue", 33, seed=4)
    ext = VideoRequest(
        prompt="the circle turns blue",
        num_frames=33,
        num_inference_steps=3,
        seed=4,
        job="v2",
        continue_from=Continuation(session="v1", plan=plan),
    )
    extended = worker.run(ids(ext))
    assert np.array_equal(frames(extended)[:17], frames(base)) and frames(extended).shape[0] == 33
    assert extended.stats["resumed_chunks"] == 2 and extended.plan == plan
    # the session evicted (or deleted): regenerated from the plan, same frames, never an error
    worker._command(WorkerCommand(drop_session="v1"))
    assert "v1" not in worker.sessions
    again = worker.run(ids(VideoRequest(**{**{f: getattr(ext, f) for f in ext.__struct_fields__}, "job": "v3"})))
    assert np.array_equal(frames(again), frames(extended)) and "resumed_chunks" not in again.stats


def test_a_store_too_small_keeps_nothing(worker):
    from motioncache_vllm.blocks.sessions import SessionStore

    saved, worker.sessions = worker.sessions, SessionStore(1024)
    try:
        worker.run(ids(VideoRequest(prompt="a blue square", num_frames=17, num_inference_steps=2, job="v4")))
        assert "v4" not in worker.sessions and worker.sessions.stats.refused == 1
    finally:
        worker.sessions = saved
