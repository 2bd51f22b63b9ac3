"""The oracle study's machinery (``motioncache bench oracle``) on a tiny random config."""

import torch

from motioncache_vllm.bench.oracle import OracleConfig, run_oracle, spearman, top_share
from motioncache_vllm.config import GenerationRequest

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
    assert (res.frames == generate_video(tiny_pipe, REQ).frames).all()
    rows = [r for s in states for r in s.records]
    assert rows and all(-1 <= r["previous_change"] <= 1 and 0 < r["top30_share"] <= 1 for r in rows)


def test_rank_helpers():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert abs(spearman(a, a * 10) - 1.0) < 1e-9 and abs(spearman(a, -a) + 1.0) < 1e-9
    assert top_share(torch.tensor([0.0, 0.0, 0.0, 1.0]), 0.25) == 1.0
