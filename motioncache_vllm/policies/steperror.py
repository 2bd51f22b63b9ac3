"""``steperror``: skip whole steps while their predicted effect on the *output* stays small.

Issue 11's output-error oracle (``bench/oracle.py``, ``criterion="dt"``) showed that most of
what TeaCache and MagCache leave on the table is *which whole steps* they skip, priced by
what a skip does to the latent: the flow update is ``x += dt_k * v`` with the guided
prediction ``v = v_u + g (v_c - v_u)``, so reusing ``R`` where the truth is ``R*`` moves the
latent, to first order, by ``|dt_k| * |g (R*_c - R_c) + (1 - g) (R*_u - R_u)|`` per token.
The step oracle that skips while the sum of that error since the last compute stays below
``tau`` beat the best step cache by a median +2.3 dB at 2x ideal work; a block oracle added
only +0.2 dB over it. Neither TeaCache (relL1 of e0, schedule only) nor MagCache
(calibrated magnitude ratios) weighs by ``dt`` or by the clip's own change.

This policy is that oracle without the peek (no full forward at a skipped step):

- the schedule: ``dt_k = |sigma_k - sigma_(k+1)|`` from :class:`StepObservation.sigmas`;
- the change of the guided residual ``G = g R_c + (1 - g) R_u`` since the last compute, per
  token, predicted as ``rate[p] * D``: ``D`` is the calibrated schedule distance since then
  (the sum over the steps of the model's TeaCache polynomial of relL1(e0): what
  ``motioncache calibrate`` fitted as the expected relative residual change per step; no new
  calibration), and ``rate[p]`` is *this clip's* measured change of ``G`` per unit of ``D``
  at its computed steps (the warm-up steps seed it; blended with ``rate_smoothing``). That
  measured scale is the content / motion-aware part: a fast or textured clip changes more
  per unit of schedule than a static one, and the CFG difference (amplified by g) is in it;
- at step ``k``, ``e[p] = dt_k * rate[p] * D`` joins the error accumulated since the last
  compute; the step is skipped while the mean over tokens stays below ``threshold``
  (absolute, in the oracle's units, so the oracle's thresholds are comparable), else
  computed in full, which resets the sum;
- the first ``warmup_ratio`` of a chunk's steps run in full, as a share of the schedule
  (MagCache's retention ratio): a first-order estimate does not see how later steps carry an
  early error on (the oracle's caveat), and 4 of 30 steps lost 12 dB on a pan where 6 did not
  (before the calibrated skip sensitivity); 5 of 30 since session 16 (6 before).

A second-order term, ``amplification = a`` (default 1): a step's error is priced
``exp(a * sigma_(k+1))`` times, for the later steps that carry it on (a constant growth rate
per unit of sigma); a = 1 beat the plain first-order sum (a = 0) at 2.5-3x on two caption
sets. Option ``schedule = "magcache"`` sums ``|1 - gamma_k|`` of the model's calibrated MagCache
ratios as ``D`` in place of the e0 polynomial; it lost (magnitude ratios miss most of the
mid-schedule change), so the e0 polynomial stays the default (benchmarks/RESULTS.md).
Option ``second_order = "measured"`` replaces ``exp(a * sigma_(k+1))`` by the model's calibrated
skip sensitivity (``SkipSensitivity``: the final error of skipping step k alone per unit of its
first-order error, measured on training captions; a model without it runs every step in full).
It beat the exp term at 2.5x ideal work on four caption sets, so the default ``auto`` uses it
wherever the model has the curve and falls back to the exp term elsewhere.
Option ``schedule = "measured"`` sums the model's calibrated mean change of the guided
residual per step under full compute (``GuidedChange``, fitted by ``motioncache calibrate``
on training captions; a model without it runs every step in full): the curve the clip's
measured rate is a rate of (absolute change of the guided residual), where the e0 polynomial
is the TeaCache fit of the relative change of one branch's residual.

Both CFG branches execute the conditional branch's decision (``shares_cfg_decisions``); the
runtime gives the deciding state the unconditional branch's state (``PolicyState.partner``),
so the rate is measured on the guided residual as the oracle's criterion is.

The step decision takes the mean over tokens, so on its own the per-token rates act only
through their mean and every block is recomputed equally often (a flat recompute map). Two
spatial parts put the per-token rates to work *under* this step choice (partial steps: the
recomputed tokens attend to the others' K/V as cached); both are off by default since session
16 (the first was on, ``refresh_fraction`` 0.1, in sessions 13-15):

- ``refresh_fraction``: a step the rule skips instead recomputes that share of the blocks with
  the largest predicted error (gates: ``refresh_within`` steps after a computed step,
  ``refresh_share`` of the error in the chosen blocks);
- ``static_fraction``: a step the rule computes leaves out that share of the blocks with the
  smallest predicted error.

For these, ``D`` and the error are per token, since *that token's* last compute; a refreshed
token's error and distance restart (``refresh_keep``: it keeps that share of its error, as a
refresh attends to stale K/V; 1 gained +0.6-0.8 dB for 1-2% of speed on set 6 and was within
0.7 dB of 0 on set 10, so 0 stays the default) and its rate is measured over its own distance. With both
at 0 every compute is a full step, every token's ``D`` is the same, and the decisions are the
whole-step rule's. The block oracle beat the step oracle by +0.2-0.7 dB at 2-3x with the
runtime's stale K/V; earlier partial-step policies (``tokenrate``, ``magrefresh``) lost to full
steps at equal work mainly through their step choice (benchmarks/RESULTS.md). Measured on three
unseen caption sets (RESULTS.md, "Session 10"): ``refresh_fraction`` 0.1 within 2 steps makes the
map follow motion (median Spearman 0.57-0.64 over moving objects), +0.1 to +1.1 dB over whole
steps at 1.5-2x ideal work and -0.6 to +0.2 at 2.5-3x (``refresh_share`` 0.15 trims the pans'
refreshes); but a refresh of a tenth of the blocks cost a third to a half of a step on the wall
clock, so both stayed off by default. With both CFG branches in one call (``cfg_batched``,
session 12) the refreshes realise 0.85-0.95 of their ideal speedup and the spatial part is >= 1.5
dB above the best of TeaCache and MagCache at equal wall clock from ~3.85x to 7x on three held-out
sets (map Spearman 0.5-0.66; RESULTS.md, "Session 13"), so ``refresh_fraction`` 0.1 within 2
steps was the default in sessions 13-15 (``refresh_fraction=0`` gives whole steps only;
``static_fraction`` lost outright). On two later held-out sets (10 and 11, "Session 15") it was
not above the best single cache from ~5x up: refreshes collapsed single chunks of a pan, a
bounce and a fast clip, where whole steps did better. On 30 held-out clips (sets 10-13,
"Session 16") ``refresh_fraction`` 0.05 kept the map (0.51-0.58) at +0.25 dB over whole steps at
about equal ideal work, but a refresh's residual, computed against stale K/V, is itself worth
little (added to whole steps' schedule without changing a decision: -3.9 to +0.8 dB on three
clips) and its partial steps cost 11-13% of the wall clock, so whole steps are the default again: the map is
``refresh_fraction=0.05``'s, the speed and quality whole steps'. On three held-out sets drawn
after that (17-19, "Session 17") the default was >= 1.5 dB above the best single cache across
the 3-6x band on each, and 0.05 was 0.9-3.0 dB below it at equal wall clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from motioncache_vllm.config import StepErrorConfig
from motioncache_vllm.motion import relative_l1
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation
from motioncache_vllm.policies.calibration import ResampledRatios


@dataclass
class StepErrorState(PolicyState):
    # (N,) calibrated schedule distance D since each token's last compute (float64: summed as
    # the whole-step rule summed one Python float)
    distance: torch.Tensor | None = None
    measured_distance: torch.Tensor | None = None  # (N,) D of the intervals that ended at this step's compute
    tokens: torch.Tensor | slice | None = None  # the tokens computed at this step
    error: torch.Tensor | None = None  # (N,) predicted latent error summed since the last compute
    rate: torch.Tensor | None = None  # (N,) change of the guided residual per unit of D
    reference: torch.Tensor | None = None  # (N, C) guided residual at the last compute
    latest: torch.Tensor | None = None  # (N, C) this branch's residual of this step, if computed
    computed: bool = False  # this step ran (reported by on_computed)
    guidance: float = 1.0
    run: int = 0  # steps skipped in a row

    def reset(self) -> None:
        super().reset()
        self.distance = torch.zeros(self.layout.num_tokens, dtype=torch.float64)
        self.measured_distance = self.tokens = None
        self.error = self.rate = self.reference = self.latest = None
        self.computed, self.guidance, self.run = False, 1.0, 0

    def __post_init__(self) -> None:
        self.reset()


class StepErrorPolicy(CachePolicy):
    name = "steperror"
    config_cls = StepErrorConfig
    description = "skip whole steps while the predicted output error (dt x the clip's guided change) stays small"
    shares_cfg_decisions = True  # one decision for both branches: the error is of the guided prediction

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        mag_ratios, measured = self.model_mag_ratios, self.model_guided_change
        self.ratios: ResampledRatios | None = ResampledRatios(mag_ratios) if mag_ratios is not None else None
        self.measured: ResampledRatios | None = ResampledRatios(measured) if measured is not None else None
        sensitivity = self.model_skip_sensitivity
        self.sensitivity: ResampledRatios | None = ResampledRatios(sensitivity) if sensitivity is not None else None
        # "auto": the calibrated sensitivity where the model has one, else the exp prior
        self.second_order = self.config.second_order
        if self.second_order == "auto":
            self.second_order = "exp" if self.sensitivity is None else "measured"

    def new_state(self, layout) -> StepErrorState:
        return StepErrorState(layout)

    def predicted_error(self, state: StepErrorState, dt: float) -> torch.Tensor:
        """(N,) first-order latent error of reusing the residual at this step, per token."""
        # float32, as the whole-step rule's float32 rate x one Python float
        return dt * state.rate * state.distance.to(state.rate.dtype)

    def step_distance(self, state: StepErrorState, obs: StepObservation) -> float | None:
        """The calibrated schedule distance from the previous step to this one (None: the
        curve is missing for this schedule)."""
        if self.config.schedule == "magcache":
            if self.ratios is None or not obs.num_steps:
                return None
            return abs(1.0 - self.ratios.at(obs.num_steps, state.step))
        if self.config.schedule == "measured":
            if self.measured is None or not obs.num_steps:
                return None
            return self.measured.at(obs.num_steps, state.step)
        return self.rescale(relative_l1(obs.e0, state.previous_e0))

    def decide(self, state: StepErrorState, obs: StepObservation) -> Decision:
        cfg = self.config
        step = state.step
        if state.previous_e0 is not None:
            d = self.step_distance(state, obs)
            if d is None:
                return Decision.full()  # no calibrated curve: never guess
            state.distance += d
        state.previous_e0 = obs.e0
        state.guidance = obs.guidance_scale
        sigmas = obs.sigmas
        warmup = max(int(cfg.warmup_ratio * (obs.num_steps or 0) + 0.5), 2)
        if sigmas is None or step + 1 >= len(sigmas) or step < warmup or state.rate is None:
            return Decision.full()  # no schedule or nothing measured yet: never guess
        if cfg.max_skip_steps and state.run >= cfg.max_skip_steps:
            return Decision.full()
        total = self.predicted_error(state, abs(sigmas[step] - sigmas[step + 1]))
        if self.second_order == "measured":
            if self.sensitivity is None:
                return Decision.full()  # no calibrated sensitivity: never guess
            # what the later steps (and the solver's history) make of an error at this step
            total = total * self.sensitivity.at(obs.num_steps, step)
        elif cfg.amplification:
            # the later steps from sigma_(k+1) down carry this step's error on
            total = total * math.exp(cfg.amplification * abs(sigmas[step + 1]))
        if state.error is not None:
            total = total + state.error
        if float(total.mean()) < cfg.threshold:
            state.error = total  # a refreshed token's restarts in on_computed
            refresh = self.refresh(state, total)
            state.run += 1
            return Decision.skip() if refresh is None else Decision("partial", refresh)
        k = int(round(cfg.static_fraction * state.layout.num_blocks))
        if k == 0:
            return Decision.full()
        # leave the blocks that changed least out; they keep their error (this step's too)
        wanted = torch.ones(state.layout.num_blocks, dtype=torch.bool)
        wanted[torch.topk(self.block_error(state, total), k, largest=False).indices] = False
        state.error, state.run = total, 0  # a computed step, as a full one
        return Decision("partial", wanted)

    def block_error(self, state: StepErrorState, error: torch.Tensor) -> torch.Tensor:
        """(num_blocks,) mean predicted error of each block's tokens."""
        return state.layout.block_mean(error)

    def refresh(self, state: StepErrorState, total: torch.Tensor) -> torch.Tensor | None:
        """At a step the rule skips: the blocks to recompute (largest predicted error), or None."""
        cfg = self.config
        k = int(round(cfg.refresh_fraction * state.layout.num_blocks))
        if k == 0 or (cfg.refresh_within and state.run >= cfg.refresh_within):
            return None
        block_err = self.block_error(state, total)
        top = torch.topk(block_err, k)
        if float(top.values.sum()) < cfg.refresh_share * float(block_err.sum()):
            return None  # the error is spread out: a few blocks would not pay
        wanted = torch.zeros(state.layout.num_blocks, dtype=torch.bool)
        wanted[top.indices] = True
        return wanted

    def observe_residual(self, state: StepErrorState, residual: torch.Tensor) -> None:
        state.latest = residual

    def on_computed(self, state: StepErrorState, blocks: torch.Tensor | None) -> None:
        # the runtime may widen a decision (a forced or guarded step is a full one): what ran counts
        state.computed = True
        tokens = slice(None) if blocks is None or bool(blocks.all()) else state.layout.tokens_of(blocks)
        state.tokens, state.measured_distance = tokens, state.distance.clone()
        state.distance[tokens] = 0.0
        if isinstance(tokens, slice):
            state.error, state.run = None, 0
        elif state.error is not None:
            # a refresh keeps the run of steps since the last compute, and refresh_keep of its
            # tokens' error (their context was stale)
            state.error[tokens] *= self.config.refresh_keep if state.run else 0.0

    def end_step(self, state: StepErrorState) -> None:
        """After both branches ran (the runtime ends the deciding branch first): a computed
        step measures the clip's rate from the guided residual's change since the last one."""
        if state.computed and state.latest is not None:
            guided = state.latest
            partner = state.partner
            if partner is not None and partner.latest is not None:
                g = state.guidance
                guided = g * state.latest + (1.0 - g) * partner.latest
            tokens = state.tokens
            if state.reference is None:
                state.reference = guided.clone()  # the first compute of a chunk is a full step
            else:
                # each computed token's change per unit of its own distance since its last compute
                since = state.measured_distance[tokens]
                valid = since > 0
                measured = (guided[tokens] - state.reference[tokens]).abs().mean(-1) / since.to(guided.dtype)
                s = self.config.rate_smoothing
                if state.rate is None:
                    if isinstance(tokens, slice) and bool(valid.all()):
                        state.rate = measured
                else:
                    old = state.rate[tokens]
                    state.rate[tokens] = torch.where(valid, (1.0 - s) * old + s * measured, old)
                state.reference[tokens] = guided[tokens]
        state.computed, state.latest, state.tokens = False, None, None
        super().end_step(state)
