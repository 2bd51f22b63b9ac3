"""The oracle study's machinery (``motioncache bench oracle``) on a tiny random config."""

import msgspec
import torch

from motioncache_vllm.bench.oracle import OracleConfig, run_oracle, spearman, top_share
from motioncache_vllm.config import CacheConfig, GenerationRequest

REQ = GenerationRequest(prompt="a red circle moves right", num_frames=17, num_inference_steps=8, seed=3)


def test_partial_step_with_fresh_context_equals_the_full_step_on_the_selected_tokens(tiny_pipe):
    # unselected tokens see the K/V of this step's full forward: only the residual reuse differs
    config = OracleConfig(mode="block", threshold=0.1, warmup_steps=2)  # 33 of 48 steps partial here
    _, fresh, _ = run_oracle(tiny_pipe, REQ, config, context="fresh")
    _, stale, _ = run_oracle(tiny_pipe, REQ, config, context="stale")
    assert fresh.selected_errors and stale.selected_errors  # partial steps happened
    assert max(fresh.selected_errors) <= 1e-5
    # with the K/V the last step left (the runtime's case) the selected tokens' outputs move
    assert max(stale.selected_errors) > 1e-4


def test_record_mode_is_full_compute_and_scores_the_signals(tiny_pipe):
    from motioncache_vllm.runtime.generate import generate_video

    res, _, states = run_oracle(tiny_pipe, REQ, OracleConfig(mode="record", warmup_steps=2))
    assert res.stats["token_steps_computed"] == res.stats["token_steps_total"]
    # the oracle's runner has its own _call: one call per CFG branch, so the reference too
    separate = CacheConfig.decode(cfg_batched=False)
    assert (res.frames == generate_video(tiny_pipe, REQ, cache=separate).frames).all()
    rows = [r for s in states for r in s.records]
    assert rows and all(-1 <= r["previous_change"] <= 1 and 0 < r["top30_share"] <= 1 for r in rows)


def test_rank_helpers():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert abs(spearman(a, a * 10) - 1.0) < 1e-9 and abs(spearman(a, -a) + 1.0) < 1e-9
    assert top_share(torch.tensor([0.0, 0.0, 0.0, 1.0]), 0.25) == 1.0


def _replay_dt(tiny_pipe, mode: str, tau: float):
    """Run the dt oracle and replay its decisions from the raw quantities it saw."""
    req = msgspec.structs.replace(REQ, guidance_scale=5.0)
    config = OracleConfig(mode=mode, criterion="dt", threshold=tau, warmup_steps=2, trace=True)
    res, _, states = run_oracle(tiny_pipe, req, config)
    tiny_pipe.scheduler.set_timesteps(REQ.num_inference_steps)
    sigma = tiny_pipe.scheduler.sigmas.tolist()
    g = 5.0
    leaders = [s for s in states if s.trace]
    assert len(leaders) == len(states) // 2  # one decision per step for both CFG branches
    modes = []
    for s in leaders:
        lay = s.layout
        acc = torch.zeros(lay.num_tokens)
        previous = None
        for entry in s.trace:
            k = entry["step"]
            cond = entry["truth"] - entry["cached"]
            delta = g * cond + (1 - g) * (entry["partner_truth"] - entry["partner_cached"])
            total = acc + (sigma[k] - sigma[k + 1]) * delta.abs().mean(-1)
            d = entry["decision"]
            if mode == "step":
                assert (d.mode == "full") == (float(total.mean()) >= tau), (k, float(total.mean()))
                computed = torch.full((lay.num_tokens,), d.mode == "full")
            else:
                per_block = torch.stack([total[lay.block_of_token == b].mean() for b in range(lay.num_blocks)])
                wanted = per_block >= tau
                got = {"full": torch.ones_like(wanted), "skip": torch.zeros_like(wanted)}.get(d.mode, d.blocks)
                assert torch.equal(got, wanted), k
                computed = wanted[lay.block_of_token]
            # what is reused is what the last computed step left: after a skip the cache is unchanged
            if previous is not None and previous["decision"].mode == "skip":
                assert torch.equal(entry["cached"], previous["cached"])
            if previous is not None and previous["decision"].mode == "full":
                assert torch.allclose(entry["cached"], previous["truth"], atol=1e-5)
            acc = torch.where(computed, torch.zeros_like(total), total)
            previous = entry
            modes.append(d.mode)
    return res, modes


def test_dt_criterion_is_the_guided_first_order_latent_error(tiny_pipe):
    # each decision = threshold on |dt_k| * |g dR_cond + (1 - g) dR_uncond| summed since the
    # token was last computed (dt_k from the scheduler's sigmas), both branches executing it
    res, modes = _replay_dt(tiny_pipe, "step", 0.01)
    assert {"skip", "full"} <= set(modes)
    assert res.stats["partial_steps"] == 0
    res, modes = _replay_dt(tiny_pipe, "block", 0.01)
    assert "partial" in modes and "skip" in modes
