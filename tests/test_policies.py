"""Policies and motion scores on synthetic inputs whose answers are known."""

import json
import math

import numpy as np
import pytest
import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.motion import inter_frame_motion, motion_weights
from motioncache_vllm.policies import (
    InvalidPolicyConfig,
    StepObservation,
    UnknownPolicyError,
    make_policy,
    parse_overrides,
    policy_names,
)

LAYOUT = ChunkLayout(frames=2, height=2, width=2, tile=1)


def obs(e0_value: float, hidden=None, previous=None):
    hidden = torch.zeros(2, 4, 3) if hidden is None else hidden
    return StepObservation(e0=torch.full((4,), e0_value), hidden=hidden, previous_last_frame=previous)


def test_registry_lists_policies_and_rejects_unknown_names_and_fields():
    assert policy_names() == [
        "flowcache",
        "magcache",
        "magrefresh",
        "motion",
        "none",
        "steperror",
        "teacache",
        "tokenrate",
    ]
    valid = "valid policies: flowcache, magcache, magrefresh, motion, none, steperror, teacache, tokenrate"
    with pytest.raises(UnknownPolicyError, match=valid):
        make_policy("lru")
    with pytest.raises(InvalidPolicyConfig, match="unknown field `tau`"):
        make_policy("motion", {"tau": 0.1})
    assert parse_overrides(["threshold=0.2", "coefficients=[1, 0]", "x=abc"]) == {
        "threshold": 0.2,
        "coefficients": [1, 0],
        "x": "abc",
    }


def test_paper_defaults():
    cfg = make_policy("motion").config
    assert (
        cfg.threshold,
        cfg.alpha,
        cfg.warmup_steps,
        cfg.phase1_updates,
        cfg.min_update_ratio,
        cfg.vote_fraction,
    ) == (0.1, 0.6, 4, 6, 0.4, 0.5)


def test_teacache_skips_until_the_accumulated_distance_crosses_the_threshold():
    policy = make_policy("teacache", {"threshold": 0.25, "warmup_steps": 1})
    state = policy.new_state(LAYOUT)
    modes = []
    for e0 in (1.0, 1.1, 1.2, 1.3, 1.4):  # relL1 ~ 0.09, 0.08, 0.077, ...
        d = policy.decide(state, obs(e0))
        modes.append(d.mode)
        if d.mode == "full":
            policy.on_computed(state, None)
        policy.end_step(state)
    assert modes == ["full", "skip", "skip", "full", "skip"]


def test_flowcache_min_update_ratio_keeps_need_until_worthwhile():
    policy = make_policy("flowcache", {"threshold": 0.5, "warmup_steps": 0, "min_update_ratio": 0.5})
    state = policy.new_state(LAYOUT)
    policy.decide(state, obs(1.0))  # first step: no previous e0, full
    policy.on_computed(state, None)
    policy.end_step(state)
    state.need[LAYOUT.tokens_of(torch.tensor([True, False, False, False]))] = 1.0  # one block of four is due
    d = policy.decide(state, obs(1.0))  # relL1 = 0: only that block needs it, 25% < 50%
    assert d.mode == "skip" and float(state.need.max()) == 1.0  # need kept
    state.need[LAYOUT.tokens_of(torch.tensor([False, True, False, False]))] = 1.0
    d = policy.decide(state, obs(1.0))
    assert d.mode == "partial" and d.blocks.tolist() == [True, True, False, False]
    policy.on_computed(state, d.blocks)
    assert float(state.need.max()) == 0.0


def test_motion_scores_compare_frame_zero_with_previous_chunk():
    h = torch.zeros(2, 4, 3)
    h[1, 2] = 1.0  # token 2 changes between frame 0 and 1
    prev = torch.ones(4, 3)
    m = inter_frame_motion(h, prev)
    assert m[0].tolist() == [1.0, 1.0, 1.0, 1.0]  # all differ from the previous chunk's last frame
    assert m[1, 2] > 0 and m[1, [0, 1, 3]].eq(0).all()
    w = motion_weights(m, alpha=0.6)
    assert w[0].eq(1.0).all()  # no spread in frame 0: weight 1
    assert w[1, 2] == pytest.approx(1.0) and w[1, 0] == pytest.approx(0.6)


def test_motion_weights_slow_static_blocks_in_phase_two():
    policy = make_policy("motion", {"threshold": 10.0, "warmup_steps": 0, "phase1_updates": 0, "alpha": 0.5})
    state = policy.new_state(LAYOUT)
    h = torch.zeros(2, 4, 3) + 1.0
    h[1, 3] = 5.0  # token position 3 moves
    policy.decide(state, obs(1.0, h))
    policy.on_computed(state, None)
    policy.end_step(state)
    policy.decide(state, obs(2.0, h))
    # the moving block accrues need faster, so it is expected to be recomputed sooner:
    # the motion-aware eviction order puts it first
    eta = policy.steps_until_recompute(state)
    assert eta[3] < eta[0] and eta[0] == pytest.approx(eta[1])


def test_rescaler_continues_linearly_outside_its_fitted_range():
    from motioncache_vllm.policies.calibration import Rescaler

    coefficients = (300.0, -50.0, 3.0, 0.0)  # a cubic that explodes beyond x = 0.1
    inside = Rescaler(coefficients)
    ranged = Rescaler(coefficients, fit_range=(0.02, 0.1))
    assert ranged(0.05) == inside(0.05)
    slope = (inside(0.1) - inside(0.02)) / 0.08
    assert ranged(0.3) == pytest.approx(inside(0.1) + slope * 0.2)
    assert ranged(0.3) < inside(0.3) / 10
    assert ranged(0.0) == pytest.approx(max(inside(0.02) - slope * 0.02, 0.0))


def test_monotone_polyfit_drops_degree_until_the_fit_never_decreases():
    from motioncache_vllm.runtime.calibrate import monotone_polyfit

    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, 400)
    y = np.sqrt(x) + rng.normal(0, 0.2, 400)  # rising, noisy: high degrees wiggle
    coefficients, degree = monotone_polyfit(x, y, 6)
    grid = np.poly1d(coefficients)(np.linspace(x.min(), x.max(), 256))
    assert np.all(np.diff(grid) >= -1e-9) and 1 <= degree <= 6
    _, exact = monotone_polyfit(x, 2 * x**2 + 1, 2)  # already monotone: kept as asked
    assert exact == 2


def test_magcache_skips_while_the_ratio_error_is_small_and_at_most_k_in_a_row():
    from motioncache_vllm.policies import make_policy

    policy = make_policy(
        "magcache",
        {
            "threshold": 0.1,
            "max_skip_steps": 2,
            "retention_ratio": 0.2,
            "mag_ratios": [1.0] * 8 + [0.99] * 12 + [0.8] * 10,
        },
    )
    state = policy.new_state(ChunkLayout(frames=1, height=2, width=2))
    modes = []
    for _ in range(30):
        obs = StepObservation(e0=torch.zeros(4), hidden=torch.zeros(1, 4, 8), previous_last_frame=None, num_steps=30)
        decision = policy.decide(state, obs)
        modes.append(decision.mode)
        policy.on_computed(state, None) if decision.mode == "full" else None
        policy.end_step(state)
    assert modes[:6] == ["full"] * 6  # retention: 20% of 30 steps
    assert "skip" in modes[6:20]
    runs = "".join("s" if m == "skip" else "f" for m in modes).split("f")
    assert max(len(r) for r in runs) <= 2  # never more than max_skip_steps in a row
    # where the magnitude drops 20% per step, one step's error already exceeds the threshold
    assert modes[21:] == ["full"] * 9
    # resampled to a 10-step schedule, and nothing calibrated means full compute
    short = policy.new_state(ChunkLayout(frames=1, height=2, width=2))
    obs = StepObservation(e0=torch.zeros(4), hidden=torch.zeros(1, 4, 8), previous_last_frame=None, num_steps=10)
    assert policy.decide(short, obs).mode == "full"
    blind = make_policy("magcache")
    blind_state = blind.new_state(ChunkLayout(frames=1, height=2, width=2))
    blind_state.step = 10
    assert blind.decide(blind_state, obs).mode == "full"


def test_magcache_on_the_chunked_runtime_uses_the_shipped_ratios(embedded_pipe):
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.metrics import psnr_db
    from motioncache_vllm.runtime.generate import generate_video

    req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=9, num_inference_steps=20, seed=0)
    full = generate_video(embedded_pipe, req)
    cached = generate_video(
        embedded_pipe, req, cache=CacheConfig.decode(policy="magcache", policy_config={"threshold": 0.24})
    )
    assert 0 < cached.stats["skipped_steps"] and cached.stats["partial_steps"] == 0
    assert cached.stats["token_steps_computed"] < cached.stats["token_steps_total"]
    assert psnr_db(cached.frames, full.frames) > 30


def test_tokenrate_learns_per_token_rates_and_recomputes_fast_blocks_more_often():
    # block 0's residual changes 10x faster than the others' at every step; the schedule
    # distance is the same for all, so a schedule-only policy could not tell them apart
    policy = make_policy(
        "tokenrate",
        {
            "threshold": 0.3,
            "warmup_steps": 2,
            "min_update_ratio": 0.0,
            "join_fraction": 1.0,
            "full_ratio": 1.0,
            "coefficients": [1.0, 0.0],
        },
    )
    state = policy.new_state(LAYOUT)
    fast = LAYOUT.block_of_token == 0
    residual, counts, modes = torch.ones(8, 3), torch.zeros(4), []
    for step in range(16):
        decision = policy.decide(state, obs(1.0 + 0.1 * step))
        residual = residual + torch.where(fast, 0.5, 0.05)[:, None]
        modes.append(decision.mode)
        if decision.mode != "skip":
            blocks = None if decision.mode == "full" else decision.blocks
            policy.observe_residual(state, residual)
            policy.on_computed(state, blocks)
            counts += 1 if blocks is None else blocks.float()
        policy.end_step(state)
    assert modes[:2] == ["full", "full"] and "partial" in modes
    assert float(state.rate[fast].mean()) > 5 * float(state.rate[~fast].mean())
    assert counts[0] > 2 * counts[1:].max()


def _drive(policy, steps: int, fast_change: float, slow_change: float):
    """Run one chunk of ``steps`` whose block-0 residual changes ``fast_change`` per step
    (the others ``slow_change``); returns the modes and per-block compute counts."""
    state = policy.new_state(LAYOUT)
    fast = LAYOUT.block_of_token == 0
    residual, counts, modes = torch.ones(8, 3), torch.zeros(4), []
    for _ in range(steps):
        decision = policy.decide(state, StepObservation(torch.ones(4), torch.zeros(2, 4, 3), None, num_steps=steps))
        residual = residual + torch.where(fast, fast_change, slow_change)[:, None]
        modes.append(decision.mode)
        if decision.mode != "skip":
            blocks = None if decision.mode == "full" else decision.blocks
            policy.observe_residual(state, residual)
            policy.on_computed(state, blocks)
            counts += 1 if blocks is None else blocks.float()
        policy.end_step(state)
    return modes, counts, state


RATIOS = [1.0] + [0.97] * 19  # a magnitude drift of 3% per step: MagCache skips 2-3 in a row


def test_magrefresh_without_refreshes_is_magcache():
    settings = {"threshold": 0.12, "max_skip_steps": 3, "mag_ratios": RATIOS}
    mag, _, _ = _drive(make_policy("magcache", settings), 20, 0.5, 0.05)
    hybrid, _, _ = _drive(make_policy("magrefresh", {**settings, "refresh_fraction": 0.0}), 20, 0.5, 0.05)
    assert hybrid == mag and "skip" in mag


def test_magrefresh_refreshes_the_fast_block_at_skipped_steps_and_skips_more_full_steps():
    settings = {"threshold": 0.12, "max_skip_steps": 6, "mag_ratios": RATIOS, "retention_ratio": 0.2}
    mag, _, _ = _drive(make_policy("magcache", settings), 20, 0.5, 0.05)
    modes, counts, state = _drive(make_policy("magrefresh", {**settings, "refresh_fraction": 0.25}), 20, 0.5, 0.05)
    assert modes[:4] == ["full"] * 4  # retention: 20% of 20 steps seed the rates
    fast = LAYOUT.block_of_token == 0
    assert float(state.rate[fast].mean()) > 5 * float(state.rate[~fast].mean())
    # the one block refreshed at skipped steps is the fast one, so it is computed most often
    assert "partial" in modes and counts[0] > counts[1:].max()
    # the refreshes keep the mean error low: fewer full steps than MagCache at the same threshold
    assert modes.count("full") < mag.count("full")


def test_magrefresh_does_not_refresh_when_the_change_is_spread_out():
    # every block changes alike (a pan): no block set holds refresh_share of the error, so
    # the hybrid makes MagCache's decisions (partial steps there measured 15-20 dB)
    settings = {"threshold": 0.12, "max_skip_steps": 6, "mag_ratios": RATIOS}
    mag, _, _ = _drive(make_policy("magcache", settings), 20, 0.1, 0.1)
    modes, _, _ = _drive(make_policy("magrefresh", {**settings, "refresh_share": 0.4}), 20, 0.1, 0.1)
    assert modes == mag and "partial" not in modes


def test_magrefresh_weights_grow_with_the_residual_magnitude():
    # equal measured rates: only the magnitude tells the tokens apart (a reused residual's
    # error is MagCache's relative error times its magnitude)
    big = LAYOUT.block_of_token == 0
    for exponent, bigger in ((0.0, False), (2.0, True)):
        policy = make_policy("magrefresh", {"magnitude_exponent": exponent, "mag_ratios": RATIOS})
        state = policy.new_state(LAYOUT)
        state.reference = torch.where(big, 3.0, 1.0)[:, None].expand(LAYOUT.num_tokens, 3).clone()
        w = policy.weights(state)
        assert abs(float(w.mean()) - 1.0) < 1e-6
        assert (float(w[big].min()) > 2 * float(w[~big].max())) == bigger


def test_magrefresh_corrects_reused_residuals_only_when_asked():
    # a token computed at steps 0 and 2 with residuals 1 and 3 continues +1 per step at step 4
    # (extrapolate 1), half that at 0.5; rescale_reused scales by the ratios since (0.97^2)
    def reused(settings):
        policy = make_policy("magrefresh", {"mag_ratios": RATIOS, **settings})
        state = policy.new_state(LAYOUT)
        for step, value in ((0, 1.0), (2, 3.0)):
            state.step = step
            policy.observe_residual(state, torch.full((LAYOUT.num_tokens, 3), value))
            policy.on_computed(state, None)
        state.step, state.acc = 4, torch.full((LAYOUT.num_tokens,), 0.97**2)
        residual = torch.full((LAYOUT.num_tokens, 3), 3.0)
        policy.correct_reused(state, residual)
        return float(residual.mean())

    assert reused({}) == 3.0
    assert reused({"extrapolate": 1.0}) == pytest.approx(5.0)
    assert reused({"extrapolate": 0.5}) == pytest.approx(4.0)
    assert reused({"rescale_reused": True}) == pytest.approx(3.0 * 0.97**2)


def _steperror_chunk(policy, sigmas, e0s, cond, uncond, guidance, spatial=False):
    """One chunk through a CFG pair of states as the runtime drives them: the cond state
    decides, the uncond state follows (its residual reported before both end_steps). With
    ``spatial`` a partial step is allowed and reported as ``"partial:"`` + its block mask
    (e.g. ``"partial:0100"``); both branches execute it."""
    leader, follower = policy.new_state(LAYOUT), policy.new_state(LAYOUT)
    leader.partner = follower
    modes = []
    for k, e0 in enumerate(e0s):
        o = StepObservation(
            e0=torch.full((4,), e0),
            hidden=torch.zeros(2, 4, 3),
            previous_last_frame=None,
            num_steps=len(e0s),
            sigmas=sigmas,
            guidance_scale=guidance,
        )
        d = policy.decide(leader, o)
        assert d.mode in ("full", "skip", "partial") if spatial else d.mode in ("full", "skip")
        modes.append(d.mode if d.mode != "partial" else "partial:" + "".join(str(int(b)) for b in d.blocks))
        if d.mode != "skip":
            for state, residual in ((leader, cond[k]), (follower, uncond[k])):
                policy.observe_residual(state, residual)
                policy.on_computed(state, d.blocks)
        policy.end_step(leader)
        policy.end_step(follower)
    return modes, leader


def _steperror_replay(
    sigmas, e0s, cond, uncond, g, tau, warmup, smoothing, amplification=0.0, mag=None, curve=None, sensitivity=None
):
    """The decisions the policy must make, from the recorded values: predicted latent error
    of reusing at step k = |sigma_k - sigma_(k+1)| x rate x D (D: summed relL1 of e0 since
    the last compute, or with ``mag`` the summed |1 - gamma_k| of MagCache ratios, or with
    ``curve`` the summed per-step guided change of the model's calibration), times
    exp(amplification x sigma_(k+1)) (or with ``sensitivity`` the model's measured factor of
    step k), summed over the steps since; rate = the guided
    residual's measured change per unit of D at computed steps."""
    modes, distance, error, rate, reference = [], 0.0, None, None, None
    for k, e0 in enumerate(e0s):
        if k:
            if curve:
                distance += curve[k]
            else:
                distance += abs(1 - mag[k]) if mag else abs(e0 - e0s[k - 1]) / abs(e0s[k - 1])
        mode = "full"
        if k >= warmup and rate is not None:
            carried = sensitivity[k] if sensitivity else math.exp(amplification * sigmas[k + 1])
            step_error = abs(sigmas[k] - sigmas[k + 1]) * rate * distance * carried
            total = step_error + (0 if error is None else error)
            if float(total.mean()) < tau:
                mode, error = "skip", total
        modes.append(mode)
        if mode == "full":
            guided = g * cond[k] + (1 - g) * uncond[k]
            if reference is not None:
                measured = (guided - reference).abs().mean(-1) / distance
                rate = measured if rate is None else (1 - smoothing) * rate + smoothing * measured
            reference, distance, error = guided, 0.0, None
    return modes


def test_steperror_skips_by_dt_weighted_guided_error_accumulated_since_the_last_compute():
    steps, g, tau = 16, 5.0, 0.02
    gen = torch.Generator().manual_seed(0)
    # a shifted schedule: tiny steps first, large ones at the end (dt varies ~10x)
    sigmas = tuple(float(1 - (i / steps) ** 2) for i in range(steps + 1))
    e0s = [1.0 + 0.1 * k for k in range(steps)]
    slope_c = 0.2 * torch.rand(8, 3, generator=gen)  # per token: fast and slow tokens
    slope_u = 0.8 * slope_c  # the CFG difference: guided change = 1.8x the cond branch's
    cond = [torch.ones(8, 3) + k * slope_c for k in range(steps)]
    uncond = [torch.ones(8, 3) + k * slope_u for k in range(steps)]
    policy = make_policy(
        "steperror",
        {
            "threshold": tau,
            "coefficients": [1.0, 0.0],
            "rate_smoothing": 0.5,
            "warmup_ratio": 0.25,
            "amplification": 0.0,
        },
    )
    modes, state = _steperror_chunk(policy, sigmas, e0s, cond, uncond, g)
    assert modes == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 0.5)
    assert modes[:4] == ["full"] * 4 and "skip" in modes[4:] and "full" in modes[4:]
    # small steps early are skipped in longer runs than the large ones at the end
    runs, run = [], 0
    for m in modes[4:]:
        run = run + 1 if m == "skip" else 0
        runs.append(run)
    assert max(runs[:6]) > max(runs[-4:])
    # the measured rate is the guided residual's change per unit of schedule distance
    per_step = (g * slope_c + (1 - g) * slope_u).abs().mean(-1)
    assert state.rate is not None and float(state.rate.mean()) > 5 * float(slope_c.abs().mean())
    assert torch.allclose(state.rate / state.rate.mean(), per_step / per_step.mean(), rtol=1e-4)
    # without the unconditional branch's residual (no CFG) the same chunk skips more
    alone, _ = _steperror_chunk(policy, sigmas, e0s, cond, cond, 1.0)
    assert alone == _steperror_replay(sigmas, e0s, cond, cond, 1.0, tau, 4, 0.5)
    assert alone.count("skip") > modes.count("skip")
    # the warm-up is a share of the schedule: 0.2 x 16 steps -> 3 full steps
    shorter, _ = _steperror_chunk(
        make_policy(
            "steperror",
            {
                "threshold": tau,
                "coefficients": [1.0, 0.0],
                "rate_smoothing": 0.5,
                "amplification": 0.0,
                "warmup_ratio": 0.2,
            },
        ),
        sigmas,
        e0s,
        cond,
        uncond,
        g,
    )
    assert shorter == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 3, 0.5) and shorter[3] == "skip"
    # no schedule: never guess
    nothing, _ = _steperror_chunk(policy, None, e0s, cond, uncond, g)
    assert nothing == ["full"] * steps
    # at most max_skip_steps in a row
    capped, _ = _steperror_chunk(
        make_policy(
            "steperror",
            {
                "threshold": 10.0,
                "coefficients": [1.0, 0.0],
                "max_skip_steps": 2,
                "warmup_ratio": 0.25,
                "amplification": 0.0,
            },
        ),
        sigmas,
        e0s,
        cond,
        uncond,
        g,
    )
    assert capped[4:] == ["skip", "skip", "full"] * 4


def test_steperror_default_warm_up_is_five_of_thirty_steps():
    """The default warm-up (``warmup_ratio`` 0.15) runs 5 of 30 steps in full (3 of 20), then a
    threshold nothing reaches skips the rest."""
    for steps, warm in ((30, 5), (20, 3)):
        sigmas = tuple(1.0 - i / steps for i in range(steps + 1))
        e0s = [1.0 + 0.1 * k for k in range(steps)]
        residuals = [torch.ones(8, 3) + 0.01 * k for k in range(steps)]
        policy = make_policy("steperror", {"threshold": 1e6, "coefficients": [1.0, 0.0]})
        modes, _ = _steperror_chunk(policy, sigmas, e0s, residuals, residuals, 1.0)
        assert modes == ["full"] * warm + ["skip"] * (steps - warm)


def test_steperror_second_order_term_and_magcache_schedule_change_the_decisions_as_replayed():
    steps, g, tau = 16, 5.0, 0.04
    gen = torch.Generator().manual_seed(0)
    sigmas = tuple(float(1 - (i / steps) ** 2) for i in range(steps + 1))
    e0s = [1.0 + 0.1 * k for k in range(steps)]
    slope_c = 0.2 * torch.rand(8, 3, generator=gen)
    cond = [torch.ones(8, 3) + k * (1 + 0.05 * k) * slope_c for k in range(steps)]  # speeds up
    uncond = [torch.ones(8, 3) + k * 0.8 * slope_c for k in range(steps)]
    base = {"threshold": tau, "coefficients": [1.0, 0.0], "warmup_ratio": 0.25}
    plain, _ = _steperror_chunk(make_policy("steperror", {**base, "amplification": 0.0}), sigmas, e0s, cond, uncond, g)
    assert plain == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0)
    # second order (the default, a = 1): an early step's error counts exp(a x sigma_(k+1)) times, a late one ~1x
    default, _ = _steperror_chunk(make_policy("steperror", base), sigmas, e0s, cond, uncond, g)
    assert default == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=1.0)
    assert default != plain and default.count("skip") < plain.count("skip")
    amplified, _ = _steperror_chunk(
        make_policy("steperror", {**base, "amplification": 0.5}), sigmas, e0s, cond, uncond, g
    )
    assert amplified == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=0.5)
    assert amplified != default and plain.count("skip") > amplified.count("skip") > default.count("skip") > 0
    # the schedule curve from the model's MagCache ratios (resampled to 16 steps from 32)
    stored = tuple(1.0 - 0.004 * (1 + (i % 4)) - 0.0004 * i * i for i in range(32))
    gammas = [stored[round(i * 31 / 15)] for i in range(steps)]
    mag_policy = make_policy("steperror", {**base, "schedule": "magcache"}, model_mag_ratios={32: stored})
    mag, _ = _steperror_chunk(mag_policy, sigmas, e0s, cond, uncond, g)
    assert mag == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=1.0, mag=gammas)
    assert mag != default
    # a model without MagCache ratios: never guess
    uncalibrated = make_policy("steperror", {**base, "schedule": "magcache"})
    assert _steperror_chunk(uncalibrated, sigmas, e0s, cond, uncond, g)[0] == ["full"] * steps
    with pytest.raises(Exception, match="schedule"):
        make_policy("steperror", {**base, "schedule": "flow"})


def _synthetic_guided_chunk(steps: int):
    """One chunk's schedule, e0s and the two branches' residuals, changing faster late in the
    schedule (the conditional branch more): what the measured-curve replay tests feed steperror."""
    gen = torch.Generator().manual_seed(0)
    sigmas = tuple(float(1 - (i / steps) ** 2) for i in range(steps + 1))
    e0s = [1.0 + 0.1 * k for k in range(steps)]
    slope_c = 0.2 * torch.rand(8, 3, generator=gen)
    cond = [torch.ones(8, 3) + k * (1 + 0.05 * k) * slope_c for k in range(steps)]
    uncond = [torch.ones(8, 3) + k * 0.8 * slope_c for k in range(steps)]
    return sigmas, e0s, cond, uncond


def test_steperror_measured_schedule_sums_the_models_guided_change_curve_and_falls_back_without_it():
    steps, g, tau = 16, 5.0, 0.04
    sigmas, e0s, cond, uncond = _synthetic_guided_chunk(steps)
    base = {"threshold": tau, "coefficients": [1.0, 0.0], "warmup_ratio": 0.25, "schedule": "measured"}
    # a curve stored for 32 steps that rises 7x at the end (as the embedded model's true change)
    stored = tuple(0.6 + 0.4 * (i % 3) + 6.0 * (i / 31) ** 4 for i in range(32))
    curve = [stored[round(i * 31 / 15)] for i in range(steps)]  # resampled to 16 steps by nearest index
    policy = make_policy("steperror", base, model_guided_change={32: stored})
    modes, _ = _steperror_chunk(policy, sigmas, e0s, cond, uncond, g)
    assert modes == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=1.0, curve=curve)
    assert modes[:4] == ["full"] * 4 and "skip" in modes and "full" in modes[4:]
    # the curve decides: the e0 schedule (ignoring it) and a flat curve of the same mean decide otherwise
    teacache, _ = _steperror_chunk(
        make_policy("steperror", {**base, "schedule": "teacache"}), sigmas, e0s, cond, uncond, g
    )
    flat = {32: (sum(stored) / 32,) * 32}
    level, _ = _steperror_chunk(make_policy("steperror", base, model_guided_change=flat), sigmas, e0s, cond, uncond, g)
    assert modes != teacache and modes != level
    # a stored length is used as it is
    exact = make_policy("steperror", base, model_guided_change={16: tuple(curve[::-1])})
    assert _steperror_chunk(exact, sigmas, e0s, cond, uncond, g)[0] == _steperror_replay(
        sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=1.0, curve=curve[::-1]
    )
    # a model without the curve: every step in full, never a guess
    uncalibrated = make_policy("steperror", base, model_mag_ratios={32: (1.0,) * 32})
    assert _steperror_chunk(uncalibrated, sigmas, e0s, cond, uncond, g)[0] == ["full"] * steps


def test_steperror_on_the_chunked_runtime_sees_the_schedule_and_both_cfg_branches(embedded_pipe, monkeypatch):
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.metrics import psnr_db
    from motioncache_vllm.policies.steperror import StepErrorPolicy
    from motioncache_vllm.runtime.generate import generate_video

    seen = []
    decide = StepErrorPolicy.decide

    def recording_decide(self, state, obs):
        seen.append((obs.sigmas, obs.guidance_scale, state.partner is not None, obs.num_steps))
        return decide(self, state, obs)

    monkeypatch.setattr(StepErrorPolicy, "decide", recording_decide)
    req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=17, num_inference_steps=10, seed=0)
    full = generate_video(embedded_pipe, req)
    whole_steps = {"refresh_fraction": 0.0}
    cached = generate_video(embedded_pipe, req, cache=CacheConfig.decode(policy="steperror", policy_config=whole_steps))
    sigmas = tuple(float(s) for s in embedded_pipe.scheduler.sigmas)
    # one decision per (chunk, step), by the cond branch, which holds the uncond branch's state
    assert len(seen) == cached.stats["full_steps"] // 2 + cached.stats["skipped_steps"] // 2
    assert all(s == sigmas and len(s) == 11 and g == cached.guidance and p and n == 10 for s, g, p, n in seen)
    assert cached.guidance > 1
    assert cached.stats["skipped_steps"] > 0 and cached.stats["partial_steps"] == 0
    assert psnr_db(cached.frames, full.frames) > 30
    # a higher threshold skips more; the default is whole steps (no partial step)
    more = generate_video(
        embedded_pipe, req, cache=CacheConfig.decode(policy="steperror", policy_config={"threshold": 1.0})
    )
    assert more.stats["skipped_steps"] > cached.stats["skipped_steps"] and more.stats["partial_steps"] == 0
    # the spatial part refreshes the blocks of largest predicted error at some steps the rule skips
    spatial = generate_video(
        embedded_pipe,
        req,
        cache=CacheConfig.decode(policy="steperror", policy_config={"threshold": 1.0, "refresh_fraction": 0.1}),
    )
    assert spatial.stats["partial_steps"] > 0 and len(np.unique(spatial.recompute_map)) > 1


def test_a_calibration_file_with_a_bad_step_curve_is_refused_naming_the_field(tmp_path):
    from motioncache_vllm.config import InvalidPolicyConfig, decode_policy
    from motioncache_vllm.policies.calibration import CALIBRATION_FILE, CalibrationError, load_model_calibration

    path = tmp_path / CALIBRATION_FILE
    good = {"coefficients": [1.0, 0.0], "guided_change": {"3": [0.5, 0.5, 1.5]}}
    path.write_text(json.dumps(good))
    assert load_model_calibration(tmp_path).guided_change == {3: (0.5, 0.5, 1.5)}
    for name in ("guided_change", "skip_sensitivity"):
        for bad in ({"3": [0.5, 1.5]}, {"3": [0.5, 0.0, 1.5]}, {"3": "flat"}, {"x": [1.0]}):
            path.write_text(json.dumps({**good, name: bad}))
            with pytest.raises(CalibrationError, match=name) as info:
                load_model_calibration(tmp_path)
            assert len(str(info.value).splitlines()) == 1 and str(path) in str(info.value)
    with pytest.raises(InvalidPolicyConfig, match="schedule") as info:
        decode_policy("steperror", {"schedule": "curve"})
    assert len(str(info.value).splitlines()) == 1


def test_steperror_measured_second_order_prices_each_step_by_the_models_skip_sensitivity():
    steps, g, tau = 16, 5.0, 0.04
    sigmas, e0s, cond, uncond = _synthetic_guided_chunk(steps)
    base = {"threshold": tau, "coefficients": [1.0, 0.0], "warmup_ratio": 0.25, "second_order": "measured"}
    # stored for 20 steps: dear early and at the end, cheap in the middle (the embedded model's shape)
    stored = tuple(3.0 if i < 6 else 0.3 if i < 17 else 1.2 for i in range(20))
    factor = [stored[round(i * 19 / 15)] for i in range(steps)]
    policy = make_policy("steperror", base, model_skip_sensitivity={20: stored})
    modes, _ = _steperror_chunk(policy, sigmas, e0s, cond, uncond, g)
    assert modes == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, sensitivity=factor)
    # the factor decides: the exp term (amplification 1, also amplification 0) decides otherwise
    for a in (1.0, 0.0):
        other, _ = _steperror_chunk(
            make_policy("steperror", {**base, "second_order": "exp", "amplification": a}), sigmas, e0s, cond, uncond, g
        )
        assert modes != other
    # with the measured factor the amplification setting is not used
    ignored = make_policy("steperror", {**base, "amplification": 3.0}, model_skip_sensitivity={20: stored})
    assert _steperror_chunk(ignored, sigmas, e0s, cond, uncond, g)[0] == modes
    # a model without it: every step in full
    uncalibrated = make_policy("steperror", base, model_guided_change={20: (1.0,) * 20})
    assert _steperror_chunk(uncalibrated, sigmas, e0s, cond, uncond, g)[0] == ["full"] * steps
    with pytest.raises(Exception, match="second_order") as info:
        make_policy("steperror", {"second_order": "quadratic"})
    assert len(str(info.value).splitlines()) == 1
    # the default ("auto"): the measured factor where the model has it, the exp term where not
    auto = {k: v for k, v in base.items() if k != "second_order"}
    with_curve = make_policy("steperror", auto, model_skip_sensitivity={20: stored})
    assert _steperror_chunk(with_curve, sigmas, e0s, cond, uncond, g)[0] == modes
    without = _steperror_chunk(make_policy("steperror", auto), sigmas, e0s, cond, uncond, g)[0]
    assert without == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0, amplification=1.0)
    assert without != modes


def _steperror_spatial_replay(sigmas, e0s, cond, uncond, g, tau, warmup, refresh, static=0.0, within=0, keep=0.0):
    """The spatial part's decisions from the recorded values (first-order term only, as
    ``amplification`` 0): per token, D and the error since *its* last compute; a step the rule
    skips recomputes the ``refresh`` share of blocks with the largest mean error (LAYOUT: a
    block = one token position in both frames), a step it computes leaves out the ``static``
    share with the smallest; computed tokens restart and measure their rate over their own D (a
    refreshed token keeps the ``keep`` share of its error)."""
    n, blocks = 8, 4
    block_of = torch.arange(4).repeat(2)
    modes, dist, error, rate, reference, run = [], torch.zeros(n, dtype=torch.float64), None, None, None, 0
    for k, e0 in enumerate(e0s):
        if k:
            dist += abs(e0 - e0s[k - 1]) / abs(e0s[k - 1])
        computed, mode = torch.ones(blocks, dtype=torch.bool), "full"
        if k >= warmup and rate is not None:
            total = abs(sigmas[k] - sigmas[k + 1]) * rate * dist.float() + (0 if error is None else error)
            per_block = torch.zeros(blocks).index_add_(0, block_of, total) / 2
            if float(total.mean()) < tau:
                error, computed, mode = total, torch.zeros(blocks, dtype=torch.bool), "skip"
                if refresh and not (within and run >= within):
                    computed[torch.topk(per_block, round(refresh * blocks)).indices] = True
                run += 1
            elif static:
                error, run = total, 0
                computed[torch.topk(per_block, round(static * blocks), largest=False).indices] = False
        if mode != "full" or not bool(computed.all()):
            mode = "partial:" + "".join(str(int(b)) for b in computed) if computed.any() else "skip"
        modes.append(mode)
        if computed.any():
            tokens = computed[block_of]
            guided = g * cond[k] + (1 - g) * uncond[k]
            if reference is not None:
                measured = (guided - reference).abs().mean(-1) / dist.float()
                rate = measured if rate is None else torch.where(tokens, measured, rate)
                reference = torch.where(tokens[:, None], guided, reference)
            else:
                reference = guided.clone()
            dist[tokens] = 0.0
            if bool(computed.all()):
                error, run = None, 0
            elif error is not None:
                error[tokens] *= keep if run else 0.0
    return modes


def _two_speed_chunk(steps: int):
    """Residuals linear in the schedule distance D (so a token's measured rate is the same
    over any interval), one fast block (position 2), one medium (0); the largest residual
    *values* sit in the slow block 3, so a choice by magnitude would pick it."""
    sigmas = tuple(float(1 - (i / steps) ** 2) for i in range(steps + 1))
    e0s = [1.0 + 0.1 * k for k in range(steps)]
    cum = [0.0]
    for k in range(1, steps):
        cum.append(cum[-1] + abs(e0s[k] - e0s[k - 1]) / abs(e0s[k - 1]))
    speed = torch.tensor([0.5, 0.05, 2.0, 0.02]).repeat(2)[:, None] * torch.ones(8, 3)
    offset = torch.tensor([0.0, 0.0, 0.0, 9.0]).repeat(2)[:, None]
    cond = [offset + 1.0 + c * speed for c in cum]
    uncond = [offset + 1.0 + 0.8 * c * speed for c in cum]
    return sigmas, e0s, cond, uncond, speed


def test_steperror_refresh_recomputes_the_blocks_with_the_largest_predicted_error_and_restarts_them():
    steps, g, tau = 16, 5.0, 0.05
    sigmas, e0s, cond, uncond, speed = _two_speed_chunk(steps)
    base = {"threshold": tau, "coefficients": [1.0, 0.0], "warmup_ratio": 0.25, "amplification": 0.0}
    # the new fields at 0: the whole-step rule's decisions exactly
    whole, _ = _steperror_chunk(make_policy("steperror", base), sigmas, e0s, cond, uncond, g)
    assert whole == _steperror_replay(sigmas, e0s, cond, uncond, g, tau, 4, 1.0) and "skip" in whole
    zeros = {**base, "refresh_fraction": 0.0, "static_fraction": 0.0, "refresh_within": 0, "refresh_share": 0.0}
    assert _steperror_chunk(make_policy("steperror", zeros), sigmas, e0s, cond, uncond, g)[0] == whole

    policy = make_policy("steperror", {**base, "refresh_fraction": 0.25, "refresh_within": 0})
    modes, state = _steperror_chunk(policy, sigmas, e0s, cond, uncond, g, spatial=True)
    assert modes == _steperror_spatial_replay(sigmas, e0s, cond, uncond, g, tau, 4, 0.25)
    refreshes = [m for m in modes if m.startswith("partial")]
    # the fast block first (not the largest residual, block 3); its error then restarts, so
    # the medium block (next largest rate x D) gets its turn too
    assert refreshes[:3] == ["partial:0010", "partial:0010", "partial:1000"]
    # refreshes pay back: the full steps come later than without them
    assert modes.count("full") < whole.count("full")
    # every computed token's rate is its own change per unit of its own D (exact: linear in D)
    per_token = (g * speed + (1 - g) * 0.8 * speed).abs().mean(-1)
    assert torch.allclose(state.rate, per_token, rtol=1e-3)

    # restarts: right after a refresh the refreshed block's tokens have no error and no
    # distance, the others keep theirs
    leader = policy.new_state(LAYOUT)
    follower = policy.new_state(LAYOUT)
    leader.partner = follower
    for k, e0 in enumerate(e0s):
        o = StepObservation(torch.full((4,), e0), torch.zeros(2, 4, 3), None, steps, sigmas, g)
        d = policy.decide(leader, o)
        if d.mode == "partial":
            before = leader.error.clone()
            for state, residual in ((leader, cond[k]), (follower, uncond[k])):
                policy.observe_residual(state, residual)
                policy.on_computed(state, d.blocks)
            tokens = LAYOUT.tokens_of(d.blocks)
            others = LAYOUT.tokens_of(~d.blocks)
            assert float(leader.error[tokens].abs().max()) == 0.0 and float(leader.distance[tokens].max()) == 0.0
            assert torch.equal(leader.error[others], before[others]) and float(leader.distance[others].min()) > 0
            break
        if d.mode == "full":
            for state, residual in ((leader, cond[k]), (follower, uncond[k])):
                policy.observe_residual(state, residual)
                policy.on_computed(state, None)
        policy.end_step(leader)
        policy.end_step(follower)
    else:
        raise AssertionError("no refresh happened")

    # the choice follows the per-token rate: the same chunk with the fast and the medium
    # block's speeds swapped refreshes the other block first
    swap = [2, 1, 0, 3, 6, 5, 4, 7]
    swapped, swapped_u = [c[swap] for c in cond], [u[swap] for u in uncond]
    other, _ = _steperror_chunk(policy, sigmas, e0s, swapped, swapped_u, g, spatial=True)
    assert next(m for m in other if m.startswith("partial")) == "partial:1000"


def test_steperror_refresh_gates_and_static_blocks_are_replayed():
    steps, g, tau = 16, 5.0, 0.05
    sigmas, e0s, cond, uncond, _ = _two_speed_chunk(steps)
    base = {"threshold": tau, "coefficients": [1.0, 0.0], "warmup_ratio": 0.25, "amplification": 0.0}
    run = lambda extra: _steperror_chunk(  # noqa: E731
        make_policy("steperror", {**base, **extra}), sigmas, e0s, cond, uncond, g, spatial=True
    )[0]
    # only in the first step after a compute
    within = run({"refresh_fraction": 0.25, "refresh_within": 1})
    assert within == _steperror_spatial_replay(sigmas, e0s, cond, uncond, g, tau, 4, 0.25, within=1)
    assert "skip" in within and any(m.startswith("partial") for m in within)
    # a share gate no block set can reach: no refresh, the whole-step rule's decisions
    assert run({"refresh_fraction": 0.25, "refresh_share": 1.0}) == run({})
    # a computed step leaves out the block with the smallest predicted error (the slowest, 3)
    static = run({"static_fraction": 0.25})
    assert static == _steperror_spatial_replay(sigmas, e0s, cond, uncond, g, tau, 4, 0.0, static=0.25)
    assert "partial:1110" in static and static[:4] == ["full"] * 4
    # a refresh that keeps some of its tokens' error (stale context) defers the next full step
    # less: full steps come sooner, between the exact refresh's and the whole-step rule's
    exact = run({"refresh_fraction": 0.25, "refresh_within": 0})
    kept = {keep: run({"refresh_fraction": 0.25, "refresh_within": 0, "refresh_keep": keep}) for keep in (0.5, 1.0)}
    for keep, modes in kept.items():
        assert modes == _steperror_spatial_replay(sigmas, e0s, cond, uncond, g, tau, 4, 0.25, keep=keep)
        assert modes != exact
    assert exact.count("full") < kept[1.0].count("full") < run({}).count("full")


def test_steperror_spatial_fields_are_validated_naming_the_field():
    for field, value in (
        ("refresh_fraction", 1.0),
        ("refresh_fraction", -0.1),
        ("static_fraction", 1.5),
        ("refresh_within", -1),
        ("refresh_share", 2.0),
        ("refresh_keep", 1.5),
    ):
        with pytest.raises(InvalidPolicyConfig, match=field) as info:
            make_policy("steperror", {field: value})
        assert len(str(info.value).splitlines()) == 1
