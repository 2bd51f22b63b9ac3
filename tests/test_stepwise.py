"""StepwiseGeneration: the resumable chunked runtime that generate_video runs to the end and
the vLLM plugin interleaves across requests, one unit per engine step."""

import numpy as np
import pytest
from diffusers.hooks import HookRegistry

from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.models.wan_adapter import _MEMO_HOOK, CachedCrossAttnProcessor, CachedSelfAttnProcessor
from motioncache_vllm.runtime.chunked import shared_adapter
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.runtime.request import make_pool
from motioncache_vllm.runtime.stepwise import StepwiseGeneration

REQ = dict(prompt="a red circle moves right", num_frames=17, num_inference_steps=8, seed=3)
MOTION = {"threshold": 1.5}


def assert_clean(pipe):
    """No MotionCache hook or processor left on the transformer."""
    for block in pipe.transformer.blocks:
        assert HookRegistry.check_if_exists_or_initialize(block).get_hook("motioncache_block") is None
        assert not isinstance(block.attn1.processor, CachedSelfAttnProcessor)
        assert not isinstance(block.attn2.processor, CachedCrossAttnProcessor)
    for module in pipe.transformer.modules():
        assert HookRegistry.check_if_exists_or_initialize(module).get_hook(_MEMO_HOOK) is None
    assert not shared_adapter(pipe.transformer)._installed


def run_to_end(gen):
    kinds = []
    while not gen.done:
        kinds.append(gen.step())
    return kinds, gen.result()


@pytest.mark.parametrize("policy,config", [("none", {}), ("motion", MOTION)])
def test_stepwise_is_bit_identical_to_generate_video(tiny_pipe, policy, config):
    cache = CacheConfig.decode(policy=policy, policy_config=config)
    ref = generate_video(tiny_pipe, GenerationRequest(**REQ), cache=cache)
    assert_clean(tiny_pipe)
    gen = StepwiseGeneration(tiny_pipe, GenerationRequest(**REQ), cache=cache)
    chunks = 3  # 17 frames -> 6 latent frames -> 3 chunks of 2
    assert gen.total_units == chunks * (8 + 1) and gen.units_done == 0
    kinds, out = run_to_end(gen)
    assert kinds == (["denoise"] * 8 + ["commit"]) * chunks
    assert np.array_equal(out.frames, ref.frames)
    for key in ("token_steps_computed", "full_steps", "partial_steps", "skipped_steps", "forced_blocks"):
        assert out.stats[key] == ref.stats[key], key
    assert np.array_equal(out.recompute_map, ref.recompute_map)
    assert_clean(tiny_pipe)
    with pytest.raises(RuntimeError, match="finished"):
        gen.step()


def test_a_chunks_frames_are_final_before_its_commit_pass(tiny_pipe):
    """What a stream sends: a chunk's frames as soon as its last denoising step ran, one unit
    before its commit; they are the final video's first frames, bit for bit."""
    cache = CacheConfig.decode(policy="none")
    gen = StepwiseGeneration(tiny_pipe, GenerationRequest(**REQ), cache=cache)
    seen = []  # (kind of the unit just run, chunks denoised, chunks committed, frames so far)
    while not gen.done:
        kind = gen.step()
        seen.append((kind, gen.chunks_denoised, gen.chunks_done, gen.frames_so_far()))
    final = gen.result().frames
    steps = 8
    # after chunk 0's last denoising step: denoised, not committed, and its frames are out
    kind, denoised, done, frames = seen[steps - 1]
    assert (kind, denoised, done) == ("denoise", 1, 0) and len(frames) > 0
    assert seen[steps - 2][1] == 0 and len(seen[steps - 2][3]) == 0  # one step earlier: nothing
    for _, _, _, frames in seen:
        assert np.array_equal(frames, final[: len(frames)])
    assert [d for _, d, _, _ in seen][-1] == 3 and len(seen[-1][3]) == len(final)


def test_interleaved_generations_share_pipe_and_pool_and_match_solo_runs(tiny_pipe):
    requests = [dict(REQ, seed=s, prompt=p) for s, p in [(3, "a red circle"), (4, "a blue square"), (5, "dots")]]
    requests[2]["num_frames"] = 9  # a shorter request (2 chunks) finishes first
    cache = CacheConfig.decode(policy="motion", policy_config=MOTION)
    solo = [generate_video(tiny_pipe, GenerationRequest(**r), cache=cache) for r in requests]
    pool = make_pool(tiny_pipe, cache.pool)  # unbounded: sharing it cannot change a decision
    gens = [
        StepwiseGeneration(tiny_pipe, GenerationRequest(**r), cache=cache, pool=pool, request_id=f"r{i}")
        for i, r in enumerate(requests)
    ]
    rounds = 0
    while not all(g.done for g in gens):
        for g in gens:
            if not g.done:
                g.step()
                # hooks stay installed while any generation is live
                assert shared_adapter(tiny_pipe.transformer)._installed == (not all(x.done for x in gens))
        rounds += 1
    assert rounds == max(g.total_units for g in gens)
    for g, ref in zip(gens, solo):
        assert np.array_equal(g.result().frames, ref.frames)
        assert g.result().stats["token_steps_computed"] == ref.stats["token_steps_computed"]
    assert pool.tables == {}  # every chunk's blocks were released
    assert_clean(tiny_pipe)


def test_interleaved_generations_keep_a_shared_pool_in_budget(tiny_pipe):
    slot = 2 * 64 * 4  # frames per chunk x dim x fp32
    cache = CacheConfig.decode(policy="motion", policy_config=MOTION, pool_mib=30 * slot / 2**20)
    pool = make_pool(tiny_pipe, cache.pool)
    gens = [
        StepwiseGeneration(
            tiny_pipe, GenerationRequest(**dict(REQ, seed=s)), cache=cache, pool=pool, request_id=f"b{s}"
        )
        for s in range(3)
    ]
    while not all(g.done for g in gens):
        for g in gens:
            if not g.done:
                g.step()
                assert pool.stats.in_use_bytes <= 30 * slot
    assert 0 < pool.stats.peak_bytes <= 30 * slot
    assert pool.stats.evictions > 0
    assert all(np.isfinite(g.result().frames.astype(float)).all() for g in gens)
    assert_clean(tiny_pipe)


def test_closing_an_unfinished_generation_frees_its_blocks_and_the_hooks(tiny_pipe):
    cache = CacheConfig.decode(policy="motion", policy_config=MOTION)
    pool = make_pool(tiny_pipe, cache.pool)
    gen = StepwiseGeneration(tiny_pipe, GenerationRequest(**REQ), cache=cache, pool=pool, request_id="x")
    for _ in range(3):
        gen.step()
    assert pool.tables and shared_adapter(tiny_pipe.transformer)._installed
    gen.close()
    gen.close()  # idempotent
    assert pool.tables == {}
    assert_clean(tiny_pipe)
    # a generation after it runs normally
    ref = generate_video(tiny_pipe, GenerationRequest(**REQ), cache=cache)
    assert ref.frames.shape == (17, 64, 64, 3)
    assert_clean(tiny_pipe)


@pytest.mark.slow
def test_stepwise_on_the_embedded_model(embedded_pipe):
    req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=17, num_inference_steps=4, seed=3)
    cache = CacheConfig.decode(policy="none")
    ref = generate_video(embedded_pipe, req, cache=cache)
    _, out = run_to_end(StepwiseGeneration(embedded_pipe, req, cache=cache))
    assert np.array_equal(out.frames, ref.frames)
    assert_clean(embedded_pipe)


BATCH_TOLERANCE = 2
"""Max |batched - solo| of a uint8 pixel: the batched call stacks the samples in the matrix
products (float reassociation); measured at most 1 on the tiny config, same cache decisions."""


@pytest.mark.parametrize("policy,config", [("none", {}), ("motion", MOTION)])
def test_step_together_batches_requests_and_matches_solo_runs(tiny_pipe, policy, config):
    """Several requests advanced by step_together (one transformer call per engine step for
    all their units of one chunk shape): the frames of each equal its solo run within
    BATCH_TOLERANCE. Staggered starts put the requests at different chunks (different
    context lengths: the padded, masked attention) and mix commits with denoising steps."""
    from motioncache_vllm.runtime.chunked import ChunkedRunner
    from motioncache_vllm.runtime.stepwise import step_together

    requests = [dict(REQ, seed=s, prompt=p) for s, p in [(3, "a red circle"), (4, "a blue square"), (5, "dots")]]
    requests[2]["num_frames"] = 9
    requests[1]["guidance_scale"] = 1.0  # one CFG branch: batched with the others' two
    cache = CacheConfig.decode(policy=policy, policy_config=config)
    solo = [generate_video(tiny_pipe, GenerationRequest(**r), cache=cache) for r in requests]
    pool = make_pool(tiny_pipe, cache.pool)
    gens, batched_calls = [], []
    original = ChunkedRunner.call_batch

    def counting(self, calls):
        batched_calls.append(len(calls))
        return original(self, calls)

    ChunkedRunner.call_batch = counting
    try:
        start = {0: 0, 1: 3, 2: 5}  # engine step at which each request arrives
        step = 0
        while len(gens) < len(requests) or not all(g.done for g in gens):
            for i, r in enumerate(requests):
                if start[i] == step:
                    gens.append(
                        StepwiseGeneration(
                            tiny_pipe, GenerationRequest(**r), cache=cache, pool=pool, request_id=f"r{i}"
                        )
                    )
            live = [g for g in gens if not g.done]
            for outcome in step_together(live):
                assert outcome in ("denoise", "commit"), outcome
            step += 1
    finally:
        ChunkedRunner.call_batch = original
    assert max(batched_calls) == 5  # 2 + 1 + 2 branches in one call
    for g, ref in zip(gens, solo):
        out = g.result()
        diff = np.abs(out.frames.astype(int) - ref.frames.astype(int)).max()
        assert diff <= BATCH_TOLERANCE, diff
        if policy == "none":
            assert out.stats["token_steps_computed"] == ref.stats["token_steps_computed"]
    assert pool.tables == {}
    assert_clean(tiny_pipe)


SPATIAL = {"threshold": 1.0, "refresh_fraction": 0.25}  # steperror's partial steps (calibrated model)


def generate_counting_single_calls(pipe, req: GenerationRequest, cache: CacheConfig):
    """``generate_video`` and how many single-sample transformer calls it made (a stacked call
    of several samples is not one: ``ChunkedRunner.call_batch`` of two samples skips ``_call``)."""
    from motioncache_vllm.runtime.chunked import ChunkedRunner

    calls: list[int] = []
    original = ChunkedRunner._call

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    ChunkedRunner._call = counting
    try:
        return generate_video(pipe, req, cache=cache), len(calls)
    finally:
        ChunkedRunner._call = original


@pytest.mark.parametrize(
    "model,policy,config,pool",
    [
        ("tiny_pipe", "none", {}, {}),
        ("tiny_pipe", "motion", MOTION, {"cfg_shared": True, "cfg_delta_dtype": "int4"}),  # one slot, both branches
        ("embedded_pipe", "steperror", SPATIAL, {}),
    ],
)
def test_cfg_batched_runs_both_branches_in_one_call_with_the_same_decisions(request, model, policy, config, pool):
    """``cfg_batched``: each unit's two CFG branches go through one transformer call (no
    single-sample call left), the cache decides the same (step counts, recompute map) and the
    frames equal the separate calls' within BATCH_TOLERANCE; with one branch (guidance 1)
    nothing changes."""
    pipe = request.getfixturevalue(model)

    def run(batched: bool, **req):
        cache = CacheConfig.decode(policy=policy, policy_config=config, cfg_batched=batched, **pool)
        return generate_counting_single_calls(pipe, GenerationRequest(**{**REQ, **req}), cache)

    separate, separate_calls = run(False)
    batched, batched_calls = run(True)
    assert batched_calls == 0 and separate_calls > 0  # every unit went through call_batch
    diff = np.abs(batched.frames.astype(int) - separate.frames.astype(int)).max()
    assert diff <= BATCH_TOLERANCE, diff
    for key in ("full_steps", "partial_steps", "skipped_steps", "token_steps_computed"):
        assert batched.stats[key] == separate.stats[key], key
    assert np.array_equal(batched.recompute_map, separate.recompute_map)
    if policy == "steperror":
        assert separate.stats["partial_steps"] > 0  # the batched call ran partial steps too
    one_separate, one_separate_calls = run(False, guidance_scale=1.0)
    one_batched, one_batched_calls = run(True, guidance_scale=1.0)
    assert one_batched_calls == one_separate_calls == separate_calls // 2  # one branch: a call a unit
    assert np.array_equal(one_batched.frames, one_separate.frames)
    assert_clean(pipe)


NEED = 2 * 64 * 3 * 256 * 4  # one 64x64 request's chunk, both CFG branches, float32


@pytest.mark.parametrize(
    "requests,policy,config,pool",
    [
        # one request, a pool at 90% of its need: with both branches planned first (one call)
        # and each write evicting the other's blocks, a pair once ran fresh cond against reused
        # uncond (19.7 dB where separate calls gave 95.3)
        (
            [GenerationRequest(prompt="static scene", num_frames=17, num_inference_steps=10, seed=0)],
            "motion",
            {"threshold": 0.5},
            {"pool_mib": 0.9 * NEED / 2**20},
        ),
        # two requests: while both run each one's writes evict the other's blocks (lru); once the
        # short one is done the long one reuses
        (
            [
                GenerationRequest(prompt="static scene", num_frames=9, num_inference_steps=8, seed=1),
                GenerationRequest(prompt="a red circle moves right slowly", num_frames=33, num_inference_steps=8),
            ],
            "steperror",
            SPATIAL,
            {"pool_mib": 1.5 * NEED / 2**20, "eviction": "lru"},
        ),
    ],
    ids=["one-request", "two-requests"],
)
def test_cfg_batched_and_separate_calls_decide_alike_on_a_short_pool(embedded_pipe, requests, policy, config, pool):
    from conftest import interleaved_on_one_pool

    """A bounded pool short of the need: stacked and separate calls make the same decisions, a
    step's two branches always run the same mode (a fresh branch against a reused one breaks
    the guidance: both reuse or neither), and the frames agree within BATCH_TOLERANCE."""
    runs = {}
    for batched in (True, False):
        cache = CacheConfig.decode(policy=policy, policy_config=config, cfg_batched=batched, **pool)
        runs[batched] = interleaved_on_one_pool(embedded_pipe, requests, cache)
    (batched, short, pairs), (separate, _, separate_pairs) = runs[True], runs[False]
    assert short.stats.evictions + short.stats.dropped_writes > 0  # the pool was short
    assert pairs == separate_pairs
    assert all(cond == uncond for (_, cond), (_, uncond) in pairs)
    if len(requests) > 1:
        assert {mode for (_, mode), _ in pairs} >= {"full", "partial"}  # it reused between the misses
    for b, s in zip(batched, separate):
        for key in ("full_steps", "partial_steps", "skipped_steps", "forced_blocks", "token_steps_computed"):
            assert b.stats[key] == s.stats[key], key
        assert np.abs(b.frames.astype(int) - s.frames.astype(int)).max() <= BATCH_TOLERANCE
