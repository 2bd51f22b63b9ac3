"""Generation snapshots (runtime/snapshot.py): resume and extension give exact frames; the session store."""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import pytest
import torch

from motioncache_vllm.blocks.sessions import SessionStore
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.runtime.request import resolve
from motioncache_vllm.runtime.snapshot import GenerationSnapshot, TensorData, VideoPlan
from motioncache_vllm.runtime.stepwise import PlanGeneration, StepwiseGeneration

REQUEST = GenerationRequest(prompt="a red circle moves right slowly", num_frames=17, num_inference_steps=3, seed=5)
CACHE = CacheConfig.decode(policy="motion")


def sha(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def run(gen) -> np.ndarray:
    while not gen.done:
        gen.step()
    return gen.result().frames


@pytest.fixture(scope="module")
def base(embedded_pipe):
    """The uninterrupted 17-frame video (2 chunks) and the snapshot after its first chunk."""
    gen = StepwiseGeneration(embedded_pipe, REQUEST, cache=CACHE)
    first = None
    while not gen.done:
        if gen.step() == "commit" and first is None:
            first = gen.snapshot()
    frames = gen.result().frames
    return frames, first, gen.snapshot()


def test_tensor_data_round_trip():
    for t in (torch.randn(2, 3), torch.arange(6, dtype=torch.int32).view(3, 2), torch.randn(4).to(torch.bfloat16)):
        back = msgspec.msgpack.decode(msgspec.msgpack.encode(TensorData.of(t)), type=TensorData).tensor()
        assert back.dtype == t.dtype and torch.equal(back, t)


def test_snapshot_only_between_chunks(embedded_pipe):
    gen = StepwiseGeneration(embedded_pipe, REQUEST, cache=CACHE)
    try:
        gen.step()
        with pytest.raises(RuntimeError, match="between chunks"):
            gen.snapshot()
    finally:
        gen.close()


@pytest.mark.parametrize("include_kv", [True, False])
def test_resume_gives_the_uninterrupted_frames(embedded_pipe, base, include_kv):
    frames, first, _ = base
    assert first.chunks_done == 1 and first.num_chunks == 2 and first.kv is not None
    snap = first if include_kv else msgspec.structs.replace(first, kv=None, previous_last=None)
    blob = snap.to_bytes()  # across a process boundary: plain msgpack
    gen = StepwiseGeneration.resume(embedded_pipe, GenerationSnapshot.from_bytes(blob), cache=CACHE)
    assert gen.units_done == gen.total_units // 2  # the first chunk is not run again
    resumed = run(gen)
    assert sha(resumed) == sha(frames)
    assert gen.result().stats["resumed_chunks"] == 1


def test_extension_keeps_the_first_frames_and_equals_its_regeneration(embedded_pipe, base):
    frames, _, done = base
    assert done.done and done.plan == VideoPlan.of(resolve(embedded_pipe, REQUEST))
    gen = StepwiseGeneration.extend(embedded_pipe, done, "the circle turns blue", 33, seed=9, cache=CACHE)
    assert gen.total_units - gen.units_done == gen.total_units // 3  # one new chunk of three
    longer = run(gen)
    assert longer.shape[0] == 33
    assert np.array_equal(longer[:17], frames)  # the original frames, exactly
    assert not np.array_equal(longer[17:21], longer[13:17])  # new content follows
    # a lost session is regenerated from its plan alone: the same frames
    plan = done.plan.extended("the circle turns blue", 33, seed=9)
    regen = PlanGeneration(embedded_pipe, plan, cache=CACHE)
    assert regen.total_units == 3 * (REQUEST.num_inference_steps + 1)
    assert sha(run(regen)) == sha(longer)
    # and from a snapshot without K/V (context recomputed with each segment's prompt)
    light = PlanGeneration(embedded_pipe, plan, msgspec.structs.replace(done, kv=None, previous_last=None), CACHE)
    assert light.total_units == REQUEST.num_inference_steps + 1
    assert sha(run(light)) == sha(longer)


def test_extension_needs_a_finished_video_and_more_frames(embedded_pipe, base):
    _, first, done = base
    with pytest.raises(ValueError, match="finished video"):
        StepwiseGeneration.extend(embedded_pipe, first, "x", 33)
    with pytest.raises(ValueError, match="must add frames"):
        StepwiseGeneration.extend(embedded_pipe, done, "x", 17)
    other = msgspec.structs.replace(done.plan, height=32)
    with pytest.raises(ValueError, match="not of this video"):
        PlanGeneration(embedded_pipe, other.extended("x", 33), done)


def test_library_path_unchanged(embedded_pipe, base):
    frames, _, _ = base
    assert sha(generate_video(embedded_pipe, REQUEST, cache=CACHE).frames) == sha(frames)


def test_session_store_budget_and_eviction():
    store = SessionStore(100)
    assert store.put("a", 1, 40) and store.put("b", 2, 40)
    assert store.get("a") == 1  # a is now the most recently used
    assert store.put("c", 3, 40)  # evicts b, the least recently used
    assert store.get("b") is None and store.get("a") == 1 and store.get("c") == 3
    assert store.stats.evictions == 1 and store.stats.bytes == 80
    assert not store.put("huge", 4, 101) and "huge" not in store
    assert store.pop("a") == 1 and store.stats.bytes == 40 and len(store) == 1
    assert store.put("c", 5, 60) and store.get("c") == 5 and store.stats.bytes == 60  # replaced, not added
    admit = SessionStore(50, eviction="admit")
    assert admit.put("x", 1, 30) and not admit.put("y", 2, 30)  # admission: never evicts
    assert SessionStore(None).put("z", 0, 10**12)
