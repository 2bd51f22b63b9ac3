"""``magrefresh``: MagCache decides *when* to compute, measured per-token rates decide *where*
the extra work of a skipped step goes.

Issue 11's finding: on this model the choice of steps dominates the choice of tokens (the
schedule-aware step caches beat per-token policies by ~10 dB at equal work on unseen
captions), while the oracle study showed that a token's own recent change ranks its next
change well (Spearman 0.89). So this hybrid keeps MagCache's step rule and spends work
spatially only inside it:

- every token ``p`` carries MagCache's accumulators since *it* was last computed: the
  product of the calibrated magnitude ratios ``acc[p]`` and the error
  ``err[p] += w[p] * |1 - acc[p]|``, with ``w = rate / mean(rate)`` (clipped, renormalised
  to mean 1) from its measured residual-change rate (as in ``tokenrate``) times its
  residual's magnitude over the mean, squared (``magnitude_exponent``: MagCache's error is
  relative, a reused residual's absolute error grows with its size; on the tuning clips
  this raised the recompute map's Spearman with pixel motion from 0.46-0.60 to 0.53-0.67);
- a step is computed in full when the mean error exceeds ``threshold`` or more than
  ``max_skip_steps`` steps ran since the last full step (with equal rates and no refreshes:
  exactly MagCache's rule);
- a step the rule would skip instead recomputes the ``refresh_fraction`` of blocks with the
  largest accumulated error (the fastest-changing tokens): their error restarts, so the
  mean stays under the threshold longer and the rule can skip more steps;
- optionally (``static_fraction``) a computed step leaves out the blocks with the smallest
  error.

Each chunk restarts everything (MagCache's ``retention_ratio`` of full steps seeds the
rates), so nothing cached crosses a scene cut. Refreshes are partial steps, whose selected
tokens attend to the stale K/V of the rest. Both CFG branches execute the conditional
branch's decision (``shares_cfg_decisions``): with per-branch rates the branches refreshed
different blocks, and a block fresh in one branch but stale in the other puts its staleness
into ``cond - uncond``, amplified by the guidance scale - that, not the partial steps as
such, was what collapsed pans (16.9 -> 27.4 dB on a held-out pan once shared), so the
concentration gate (``refresh_share``) is off by default now.

Measured (benchmarks/RESULTS.md, "Motion-aware in fact?", hybrid sections): on two unseen
caption sets the recompute map follows pixel motion (median Spearman 0.6 over the moving-
object clips), but at the default it is 1.2 and 0.9 dB below MagCache at equal work: work
spent on partial steps buys less than the same work spent on full steps on this model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motioncache_vllm.config import MagRefreshConfig
from motioncache_vllm.policies.base import (
    CachePolicy,
    Decision,
    PolicyState,
    StepObservation,
    update_token_rates,
)
from motioncache_vllm.policies.calibration import ResampledRatios


@dataclass
class MagRefreshState(PolicyState):
    acc: torch.Tensor | None = None  # (N,) product of magnitude ratios since each token's last compute
    err: torch.Tensor | None = None  # (N,) accumulated rate-weighted magnitude error
    since: torch.Tensor | None = None  # (N,) sum of |1 - ratio| since each token's last compute
    rate: torch.Tensor | None = None  # (N,) measured relative residual change per unit of ``since``
    reference: torch.Tensor | None = None  # (N, C) residual at each token's last compute
    latest: torch.Tensor | None = None  # (N, C) this step's residual (reported before on_computed)
    run: int = 0  # steps since the last full step
    previous: torch.Tensor | None = None  # (N, C) residual at each token's compute before the last
    computed_at: torch.Tensor | None = None  # (N,) step of each token's last compute
    previous_at: torch.Tensor | None = None  # (N,) step of the one before (-1: none yet)

    def reset(self) -> None:
        super().reset()
        n = self.layout.num_tokens
        self.acc, self.err, self.since = torch.ones(n), torch.zeros(n), torch.zeros(n)
        self.rate = torch.ones(n)
        self.reference = self.latest = self.previous = None
        self.computed_at, self.previous_at = torch.full((n,), -1.0), torch.full((n,), -1.0)
        self.run = 0

    def __post_init__(self) -> None:
        self.reset()


class MagRefreshPolicy(CachePolicy):
    name = "magrefresh"
    config_cls = MagRefreshConfig
    description = "MagCache's step rule; skipped steps refresh the fastest-changing blocks (per-token rates)"
    shares_cfg_decisions = True  # both CFG branches refresh the same blocks (see CachePolicy)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        own = self.config.mag_ratios
        mag_ratios = {len(own): tuple(own)} if own else self.model_mag_ratios
        self.ratios: ResampledRatios | None = ResampledRatios(mag_ratios) if mag_ratios is not None else None

    def new_state(self, layout) -> MagRefreshState:
        return MagRefreshState(layout)

    def weights(self, state: MagRefreshState) -> torch.Tensor:
        """Rate over the chunk's mean rate, clipped, renormalised to mean 1: the rule's mean
        error is MagCache's, its distribution over tokens follows the measured rates."""
        cfg = self.config
        signal = state.rate
        if cfg.magnitude_exponent and state.reference is not None:
            magnitude = state.reference.abs().mean(-1)
            signal = signal * (magnitude / magnitude.mean().clamp_min(1e-12)) ** cfg.magnitude_exponent
        w = (signal / signal.mean().clamp_min(1e-12)).clamp(cfg.min_weight, cfg.max_weight)
        return w / w.mean().clamp_min(1e-12)

    def _per_block(self, state: MagRefreshState, values: torch.Tensor) -> torch.Tensor:
        return state.layout.block_mean(values)

    def decide(self, state: MagRefreshState, obs: StepObservation) -> Decision:
        cfg = self.config
        steps = obs.num_steps
        if self.ratios is None or not steps:
            return Decision.full()  # nothing calibrated: never guess
        ratio = self.ratios.at(steps, state.step) if state.step > 0 else 1.0
        state.since += abs(1.0 - ratio)
        if state.step == 0 or state.step < int(cfg.retention_ratio * steps + 0.5):
            return Decision.full()
        state.acc *= ratio
        state.err += self.weights(state) * (1.0 - state.acc).abs()
        state.run += 1
        block_err = self._per_block(state, state.err)
        if float(block_err.mean()) <= cfg.threshold and state.run <= cfg.max_skip_steps:
            k = int(round(cfg.refresh_fraction * state.layout.num_blocks))
            late = cfg.refresh_within and state.run > cfg.refresh_within
            if k == 0 or late or float(block_err.max()) < cfg.refresh_level * cfg.threshold:
                return Decision.skip()
            top = torch.topk(block_err, k)
            if float(top.values.sum()) < cfg.refresh_share * float(block_err.sum()):
                return Decision.skip()  # the error is spread out: a partial step would not pay
            wanted = torch.zeros(state.layout.num_blocks, dtype=torch.bool)
            wanted[top.indices] = True
            return Decision.full() if bool(wanted.all()) else Decision("partial", wanted)
        k = int(round(cfg.static_fraction * state.layout.num_blocks))
        if k == 0:
            return Decision.full()
        wanted = torch.ones(state.layout.num_blocks, dtype=torch.bool)
        wanted[torch.topk(block_err, k, largest=False).indices] = False
        return Decision("partial", wanted) if bool(wanted.any()) else Decision.skip()

    def observe_residual(self, state: MagRefreshState, residual: torch.Tensor) -> None:
        state.latest = residual

    def on_computed(self, state: MagRefreshState, blocks: torch.Tensor | None) -> None:
        cfg = self.config
        tokens = slice(None) if blocks is None else state.layout.tokens_of(blocks)
        latest = state.latest
        if latest is not None:
            if state.reference is None:
                state.reference = latest.clone()
            else:
                update_token_rates(state.rate, state.reference, latest, tokens, state.since[tokens], cfg.rate_smoothing)
                if cfg.extrapolate:
                    if state.previous is None:
                        state.previous = state.reference.clone()
                    state.previous[tokens] = state.reference[tokens]
                state.reference[tokens] = latest[tokens]
            state.previous_at[tokens] = state.computed_at[tokens]
            state.computed_at[tokens] = float(state.step)
        state.acc[tokens], state.err[tokens], state.since[tokens] = 1.0, 0.0, 0.0
        state.latest = None
        if blocks is None or bool(blocks.all()):
            state.run = 0
        if state.run > 0 or blocks is not None:  # a compute event outside the full steps
            state.updates += 1

    def correct_reused(self, state: MagRefreshState, residual: torch.Tensor) -> None:
        """First order: each reused token continues its own last measured change, from its
        last two computed residuals, per step since its last compute (no K/V involved)."""
        cfg = self.config
        if cfg.rescale_reused:
            residual *= state.acc[:, None]
        if not cfg.extrapolate or state.previous is None:
            return
        gap = state.computed_at - state.previous_at
        valid = (state.previous_at >= 0) & (gap > 0)
        scale = torch.where(valid, (state.step - state.computed_at) / gap.clamp_min(1.0), 0.0) * cfg.extrapolate
        residual += scale[:, None] * (state.reference - state.previous)

    def steps_until_recompute(self, state: MagRefreshState) -> torch.Tensor:
        """Blocks with the least error are recomputed last (a full step recomputes all)."""
        cfg = self.config
        block_err = self._per_block(state, state.err)
        left = max(cfg.max_skip_steps + 1 - state.run, 0)
        # a block near the refresh front is recomputed sooner than the next full step
        rank = torch.argsort(torch.argsort(block_err, descending=True)).float()
        k = max(int(round(cfg.refresh_fraction * state.layout.num_blocks)), 1)
        return torch.minimum(torch.full_like(block_err, float(left)), torch.floor(rank / k))
