"""Chunked runtime and policies on a tiny random SkyReels-V2 config (not the shipped
weights: a config nobody tuned) and on the embedded model."""

import msgspec
import numpy as np
import pytest
import torch

from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.wan_adapter import WanFamilyAdapter
from motioncache_vllm.runtime.stream import StreamKV
from motioncache_vllm.runtime.generate import generate_video

REQ = dict(prompt="a red circle moves right", num_frames=17, num_inference_steps=8, seed=3)


def run(pipe, policy="none", runtime="chunked", **cache):
    return generate_video(
        pipe, GenerationRequest(**REQ), runtime=runtime, cache=CacheConfig.decode(policy=policy, **cache)
    )


def test_chunked_none_reproduces_the_stock_pipeline(tiny_pipe):
    stock, chunked = run(tiny_pipe, runtime="vanilla"), run(tiny_pipe)
    assert chunked.frames.shape == stock.frames.shape == (17, 64, 64, 3)
    # measured: identical up to float reassociation, at most 1/255 on a few pixels
    assert np.abs(stock.frames.astype(int) - chunked.frames.astype(int)).max() <= 1
    assert psnr_db(chunked.frames, stock.frames) > 60


def test_motion_with_zero_threshold_computes_everything_and_matches_none(tiny_pipe):
    none, motion = run(tiny_pipe), run(tiny_pipe, "motion", policy_config={"threshold": 0.0})
    assert motion.stats["token_steps_computed"] == motion.stats["token_steps_total"]
    assert np.array_equal(none.frames, motion.frames)


def test_motion_with_alpha_one_is_exactly_flowcache(tiny_pipe):
    cfg = {"threshold": 1.5, "min_update_ratio": 0.0}
    flow = run(tiny_pipe, "flowcache", policy_config=cfg)
    motion = run(tiny_pipe, "motion", policy_config={**cfg, "alpha": 1.0, "phase1_updates": 0})
    assert flow.stats["skipped_steps"] > 0
    assert np.array_equal(flow.frames, motion.frames)
    assert flow.stats["token_steps_computed"] == motion.stats["token_steps_computed"]


def test_motion_weighting_changes_decisions(tiny_pipe):
    # scene-cut guard off: on the untrained tiny model the first-step estimate is noise; with the
    # session-9 guard both runs computed the second chunk in full (5376 token-steps each)
    cfg = {"threshold": 1.5, "min_update_ratio": 0.0, "phase1_updates": 0, "cut_full_every": 0}
    a = run(tiny_pipe, "motion", policy_config={**cfg, "alpha": 1.0})
    b = run(tiny_pipe, "motion", policy_config={**cfg, "alpha": 0.2})
    assert b.stats["token_steps_computed"] < a.stats["token_steps_computed"]


@pytest.mark.parametrize("policy", ["teacache", "flowcache", "motion"])
def test_policies_skip_work_and_stay_close(tiny_pipe, policy):
    none = run(tiny_pipe)
    cached = run(tiny_pipe, policy, policy_config={"threshold": 1.5})
    assert cached.stats["token_steps_computed"] < none.stats["token_steps_computed"]
    assert np.isfinite(psnr_db(cached.frames, none.frames))


def test_zero_pool_forces_full_compute_and_exact_output(tiny_pipe):
    none = run(tiny_pipe)
    starved = run(tiny_pipe, "motion", policy_config={"threshold": 1.5}, pool_mib=0.0)
    assert starved.stats["token_steps_computed"] == starved.stats["token_steps_total"]
    assert starved.stats["pool_peak_bytes"] == 0
    assert np.array_equal(none.frames, starved.frames)


@pytest.mark.parametrize("eviction", ["motion", "lru"])
def test_pool_smaller_than_a_chunk_stays_in_budget_and_correct(tiny_pipe, eviction):
    cfg = {"threshold": 1.5}
    free = run(tiny_pipe, "motion", policy_config=cfg)
    slot = 2 * 64 * 4  # frames per chunk x dim x fp32
    budget_mib = 20 * slot / 2**20  # 20 blocks; one chunk per branch has 64
    tight = run(tiny_pipe, "motion", policy_config=cfg, pool_mib=budget_mib, eviction=eviction)
    assert tight.stats["pool_peak_bytes"] <= 20 * slot
    assert tight.stats["evictions"] > 0 or tight.stats["forced_blocks"] > 0
    assert tight.stats["token_steps_computed"] >= free.stats["token_steps_computed"]
    assert tight.frames.shape == free.frames.shape and np.isfinite(tight.frames.astype(float)).all()


def test_tiles_group_tokens(tiny_pipe):
    out = run(tiny_pipe, "motion", policy_config={"threshold": 1.5}, tile=2)
    assert out.recompute_map.shape == (6, 8, 8)
    # with 2x2 tiles every 2x2 square of positions shares its count
    m = out.recompute_map[0]
    assert (m[0::2, 0::2] == m[1::2, 1::2]).all()


class _AllTokens:
    """A StackExecution that selects every token explicitly (the gather/scatter path)."""

    def __init__(self, adapter, n, select_all_explicitly):
        self.kv = StreamKV(adapter.num_layers, n, adapter.heads, adapter.head_dim)
        self.start, self.end = 0, n
        self.rope = adapter.rope_rows(0, 2, (8, 8))
        self.explicit, self.n = select_all_explicitly, n

    def plan(self, hidden, temb):
        self.h_in = hidden
        return torch.arange(self.n) if self.explicit else None

    def finish(self, out):
        if self.explicit:  # scatter back as the runtime does
            full = self.h_in.clone()
            full[:, torch.arange(self.n)] = out
            return full
        return out


@pytest.fixture(scope="module")
def tiny_wan():
    """A tiny random plain-Wan transformer (``WanTransformer3DModel``: one timestep per
    sample, no diffusion forcing), text width matching the tiny pipeline's encoder."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=16,
        out_channels=16,
        text_dim=64,
        freq_dim=64,
        ffn_dim=128,
        num_layers=2,
        cross_attn_norm=True,
        rope_max_seq_len=1024,
    ).eval()


@pytest.mark.parametrize("family", ["skyreels_df", "wan", "wan_per_token"])
def test_selective_forward_with_every_token_equals_full_forward(tiny_pipe, tiny_wan, family):
    transformer = tiny_pipe.transformer if family == "skyreels_df" else tiny_wan
    adapter = WanFamilyAdapter(transformer).install()
    x = torch.randn(1, 16, 2, 16, 16)
    text = torch.randn(1, 24, 64)
    if family == "wan_per_token":  # Wan 2.2 style: a timestep per token, temb (B, N, 6, D)
        kwargs = {"timestep": torch.full((1, 128), 500, dtype=torch.long)}
    else:
        kwargs = adapter.call_kwargs(torch.full((1, 2), 500, dtype=torch.long))
    outs = []
    try:
        for explicit in (False, True):
            adapter.activate(_AllTokens(adapter, 128, explicit))
            with torch.no_grad():
                outs.append(transformer(x, encoder_hidden_states=text, return_dict=False, **kwargs)[0])
            adapter.activate(None)
    finally:
        adapter.uninstall()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    # and uninstalling restores the stock model
    with torch.no_grad():
        plain = transformer(x, encoder_hidden_states=text, return_dict=False, **kwargs)[0]
    torch.testing.assert_close(plain, outs[0], rtol=1e-4, atol=1e-4)


def test_chunked_runtime_drives_a_plain_wan_transformer(tiny_pipe, tiny_wan):
    """The same runner on a non-DF Wan transformer (CausVid-style chunk-by-chunk
    generation): full compute equals motion at tau = 0, and caching skips work."""
    import copy

    pipe = copy.copy(tiny_pipe)  # shares modules and config; only the transformer differs
    object.__setattr__(pipe, "transformer", tiny_wan)  # not DiffusionPipeline.__setattr__: leave the config
    none = run(pipe)
    exact = run(pipe, "motion", policy_config={"threshold": 0.0})
    cached = run(pipe, "motion", policy_config={"threshold": 1.5})
    assert none.frames.shape == (17, 64, 64, 3)
    assert np.array_equal(none.frames, exact.frames)
    assert cached.stats["token_steps_computed"] < cached.stats["token_steps_total"]
    assert psnr_db(cached.frames, none.frames) > 15


def _executed_masks(pipe, monkeypatch, policy="motion", **cache):
    """Blocks each (chunk, branch) stream computed at each step (recorded around plan()),
    and how many times the policy was asked to decide."""
    from motioncache_vllm.policies import get_policy_class
    from motioncache_vllm.runtime import chunked

    masks: dict = {}
    decides = [0]
    cls = get_policy_class(policy)
    plan, decide = chunked.ChunkStream.plan, cls.decide

    def recording_plan(self, hidden, temb):
        out = plan(self, hidden, temb)
        if not self.commit:
            _, c, branch = self.owner
            masks.setdefault((c, branch), []).append(self.executed.clone())
        return out

    def counting_decide(self, state, obs):
        decides[0] += 1
        return decide(self, state, obs)

    monkeypatch.setattr(chunked.ChunkStream, "plan", recording_plan)
    monkeypatch.setattr(cls, "decide", counting_decide)
    result = run(pipe, policy, **cache)
    monkeypatch.undo()
    return result, masks, decides[0]


def test_cfg_shared_uncond_branch_executes_the_cond_decisions(tiny_pipe, monkeypatch):
    cfg = {"threshold": 1.5, "min_update_ratio": 0.0, "phase1_updates": 0, "alpha": 0.2}
    own, own_masks, own_decides = _executed_masks(tiny_pipe, monkeypatch, policy_config=cfg)
    shared, shared_masks, shared_decides = _executed_masks(tiny_pipe, monkeypatch, policy_config=cfg, cfg_shared=True)
    chunks = {c for c, _ in shared_masks}
    assert chunks and all((c, "uncond") in shared_masks for c in chunks)
    steps = sum(len(shared_masks[c, "cond"]) for c in chunks)
    assert (own_decides, shared_decides) == (2 * steps, steps)  # the uncond branch no longer scores
    for c in chunks:
        for cond, uncond in zip(shared_masks[c, "cond"], shared_masks[c, "uncond"], strict=True):
            assert torch.equal(cond, uncond)
        # the cond branch decides exactly as it does with per-branch state
        for a, b in zip(shared_masks[c, "cond"], own_masks[c, "cond"], strict=True):
            assert torch.equal(a, b)
    assert 0 < shared.stats["token_steps_computed"] < shared.stats["token_steps_total"]
    # measured: both branches see the same block input and e0, so per-branch decisions
    # coincide and sharing changes no pixel; it only saves the second branch's scoring
    assert np.array_equal(own.frames, shared.frames)


def test_magrefresh_refreshes_the_same_blocks_in_both_cfg_branches(tiny_pipe, monkeypatch):
    # per-branch rates pick different blocks; a block fresh in one branch and stale in the
    # other puts its staleness into cond - uncond, x guidance (measured: a pan 16.9 -> 27.4 dB)
    cfg = {
        "threshold": 0.3,
        "max_skip_steps": 3,
        "mag_ratios": [1.0] + [0.9] * 7,
        "refresh_share": 0.0,
        "refresh_level": 0.0,
    }
    result, masks, decides = _executed_masks(tiny_pipe, monkeypatch, "magrefresh", policy_config=cfg)
    chunks = {c for c, _ in masks}
    assert chunks and all((c, "uncond") in masks for c in chunks)
    assert decides == sum(len(masks[c, "cond"]) for c in chunks)  # only the cond branch decides
    partial = 0
    for c in chunks:
        for cond, uncond in zip(masks[c, "cond"], masks[c, "uncond"], strict=True):
            assert torch.equal(cond, uncond)
            partial += int(bool(cond.any()) and not bool(cond.all()))
    assert partial > 0 and result.stats["partial_steps"] == 2 * partial


def test_a_pool_short_of_the_need_costs_speed_never_quality(embedded_pipe):
    """Misses escalate to a full step (a partial recompute of only the missing blocks
    measured 20 dB worse); so a pool too small for both CFG branches is full compute,
    and float16 slots hold the same blocks in half the bytes."""
    req = GenerationRequest(prompt="static scene", num_frames=17, num_inference_steps=10, seed=0)
    reference = generate_video(embedded_pipe, req)
    cache = dict(policy="motion", policy_config={"threshold": 0.5})
    need = 2 * 64 * 3 * 256 * 4  # both branches' blocks of one chunk, float32
    unbounded = generate_video(embedded_pipe, req, cache=CacheConfig.decode(**cache))
    short = generate_video(embedded_pipe, req, cache=CacheConfig.decode(**cache, pool_mib=0.9 * need / 2**20))
    half = generate_video(
        embedded_pipe, req, cache=CacheConfig.decode(**cache, pool_mib=0.5 * need / 2**20, pool_dtype="float16")
    )
    assert short.stats["evictions"] > 0 and short.stats["forced_blocks"] > 0
    assert short.stats["partial_steps"] == short.stats["skipped_steps"] == 0
    assert psnr_db(short.frames, reference.frames) >= psnr_db(unbounded.frames, reference.frames)
    assert half.stats["evictions"] == 0 and half.stats["pool_peak_bytes"] <= 0.5 * need
    assert half.stats["token_steps_computed"] == unbounded.stats["token_steps_computed"]
    assert psnr_db(half.frames, reference.frames) > psnr_db(unbounded.frames, reference.frames) - 0.1


def test_paired_cfg_slots_fit_a_quarter_pool_and_keep_every_skip(embedded_pipe):
    """Both CFG branches in one slot, the unconditional one as its difference from the
    conditional one (int8 + int4): a pool of 25% of the float32 need holds every block, so
    the run skips exactly as much as with an unbounded float32 pool, at nearly its quality."""
    req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=17, num_inference_steps=10, seed=0)
    reference = generate_video(embedded_pipe, req)
    cache = dict(policy="motion", policy_config={"threshold": 0.5}, cfg_shared=True)
    need = 2 * 64 * 3 * 256 * 4  # both branches' blocks of one chunk, float32
    unbounded = generate_video(embedded_pipe, req, cache=CacheConfig.decode(**cache))
    exact_pair = generate_video(embedded_pipe, req, cache=CacheConfig.decode(**cache, cfg_delta_dtype="float32"))
    quarter = generate_video(
        embedded_pipe,
        req,
        cache=CacheConfig.decode(**cache, pool_dtype="int8", cfg_delta_dtype="int4", pool_mib=0.25 * need / 2**20),
    )
    assert quarter.stats["forced_blocks"] == quarter.stats["evictions"] == 0
    assert quarter.stats["pool_peak_bytes"] <= 0.25 * need
    assert quarter.stats["token_steps_computed"] == unbounded.stats["token_steps_computed"]
    assert unbounded.stats["token_steps_computed"] < unbounded.stats["token_steps_total"]
    assert psnr_db(quarter.frames, reference.frames) > psnr_db(unbounded.frames, reference.frames) - 0.5
    # float32 pairs differ from per-branch slots by float rounding of (u - c) + c only
    assert psnr_db(exact_pair.frames, unbounded.frames) > 50
    # one branch (no guidance): the pair's second half is unused, caching still works
    single = generate_video(
        embedded_pipe,
        msgspec.structs.replace(req, guidance_scale=1.0),
        cache=CacheConfig.decode(**cache, cfg_delta_dtype="int4"),
    )
    assert single.stats["token_steps_computed"] < single.stats["token_steps_total"]


def test_cfg_delta_needs_shared_decisions():
    with pytest.raises(ValueError, match="needs cfg_shared"):
        CacheConfig.decode(policy="motion", cfg_delta_dtype="int4")


def test_admission_control_keeps_a_shared_short_pool_useful(embedded_pipe):
    """Three requests interleaved unit by unit on one pool that holds one request's chunk:
    evicting thrashes (each miss makes a step full), admitting chunks whole does not."""
    from conftest import interleaved_on_one_pool

    requests = [
        GenerationRequest(prompt=p, num_frames=9, num_inference_steps=10, seed=i)
        for i, p in enumerate(["static scene", "a red circle moves right slowly", "a blue square bounces up"])
    ]
    need = 2 * 64 * 3 * 256 * 4  # one request's chunk, both branches, float32
    computed = {}
    for eviction in ("lru", "admit"):
        cache = CacheConfig.decode(
            policy="motion", policy_config={"threshold": 0.5}, pool_mib=need / 2**20, eviction=eviction
        )
        results, pool, _ = interleaved_on_one_pool(embedded_pipe, requests, cache)
        stats = [r.stats for r in results]
        computed[eviction] = sum(s["token_steps_computed"] for s in stats) / sum(s["token_steps_total"] for s in stats)
        if eviction == "admit":
            assert pool.stats.evictions == 0
    # measured: lru 1.00 (every step full), admit 0.83 (one request cached whole, two uncached)
    assert computed["lru"] > 0.95 and computed["admit"] < 0.9
