"""``tokenrate``: recompute each spatial block at the rate its own residual really changes.

The project's motion-aware policy (``motion`` stays the paper's exact method). FlowCache
and MotionCache grow every token's need by the schedule-only distance
``d = poly(relL1(e0_t, e0_prev))`` times a weight; with the paper's weights that need is
the same for every token for most of a chunk, so every decision is a whole-step one. The
oracle study (``motioncache bench oracle``) measured which cheap signal ranks the tokens'
true residual change best: the token's own change at its previous step (Spearman 0.89),
ahead of its block-input change (0.58) and far ahead of the paper's inter-frame motion
(-0.05).
So here every token ``p`` carries a *rate*: the relative change of its residual per unit
of ``d``, measured each time it is recomputed (and seeded by the full warm-up steps)::

    rate[p] <- (1 - s) rate[p] + s * |R_new[p] - R_old[p]| / (mean|R_new| * D[p])

where ``D[p]`` is the distance accumulated since ``p`` was last computed. A token's need
is ``W[p] * D[p]`` with ``W = rate / mean(rate)`` (clipped): how much is recomputed per
step follows the calibrated schedule distance, as in TeaCache/FlowCache (the oracle study
found that allocation over steps matters most), and where, the measured rates. A block is
recomputed when its mean need reaches ``threshold`` (equal rates: FlowCache's rule).
Tokens in moving regions measure high rates and are refreshed often; a static background
measures low rates and is reused longer. Warm-up steps run in full and seed the rates.

Batching: a step that runs anyway also takes blocks at ``join_fraction`` of the threshold;
a step that would recompute fewer than ``min_update_ratio`` of the blocks is deferred
unless one of them is over ``defer_limit`` x the threshold; at ``full_ratio`` or more the
step runs in full (a partial step then costs about as much and leaves stale K/V).

Measured (benchmarks/RESULTS.md, "Motion-aware in fact?"): its recompute map follows
motion (Spearman 0.53 with pixel motion on unseen moving-object clips, where the step
caches' maps are flat), but on unseen captions its quality per unit of work is well below
MagCache's (28.1 vs 38.9 dB at ~2.1-2.2x ideal): its partial steps leave stale K/V. Use it
to study spatial caching, not for speed.

Scene cuts: the runtime's guard (every policy; ``runtime/chunked.py``). This policy's own
guard (a warm-up rate jump against the previous chunk) is gone: on a long multi-scene video
the warm-up residual-change rates of cut and uncut chunks were the same (0.063-0.067 at the
first step; benchmarks/RESULTS.md, "Cuts, session 7"), so it could not see a cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motioncache_vllm.config import TokenRateConfig
from motioncache_vllm.motion import relative_l1
from motioncache_vllm.policies.base import (
    CachePolicy,
    Decision,
    PolicyState,
    StepObservation,
    update_token_rates,
)


@dataclass
class TokenRateState(PolicyState):
    rate: torch.Tensor | None = None  # (N,) relative residual change per unit distance
    since: torch.Tensor | None = None  # (N,) distance accumulated since the last recompute
    reference: torch.Tensor | None = None  # (N, C) residual at each token's last recompute
    latest: torch.Tensor | None = None  # (N, C) this step's residual (reported before on_computed)

    def reset(self) -> None:
        super().reset()
        n = self.layout.num_tokens
        self.rate, self.since = torch.ones(n), torch.zeros(n)
        self.reference = self.latest = None

    def __post_init__(self) -> None:
        self.reset()


class TokenRatePolicy(CachePolicy):
    name = "tokenrate"
    config_cls = TokenRateConfig
    description = "per-token measured residual-change rates (experimental: see RESULTS.md)"

    def new_state(self, layout) -> TokenRateState:
        return TokenRateState(layout)

    def decide(self, state: TokenRateState, obs: StepObservation) -> Decision:
        cfg = self.config
        previous, state.previous_e0 = state.previous_e0, obs.e0
        if previous is not None:
            state.since += self.rescale(relative_l1(obs.e0, previous))
        if state.step < cfg.warmup_steps or previous is None:
            return Decision.full()
        lay = state.layout
        need = self.weights(state) * state.since
        per_block = lay.block_mean(need)
        wanted = per_block >= cfg.threshold
        ratio = float(wanted.float().mean())
        if ratio == 0.0:
            return Decision.skip()
        if ratio < cfg.min_update_ratio and float(per_block.max()) < cfg.defer_limit * cfg.threshold:
            return Decision.skip()
        wanted |= per_block >= cfg.join_fraction * cfg.threshold
        ratio = float(wanted.float().mean())
        return Decision.full() if ratio >= cfg.full_ratio else Decision("partial", wanted)

    def weights(self, state: TokenRateState) -> torch.Tensor:
        """Each token's rate relative to the chunk's mean rate, in ``[min_weight, max_weight]``:
        how much is recomputed per step follows the calibrated schedule distance (as in
        TeaCache/FlowCache), where it is recomputed follows the measured rates."""
        cfg = self.config
        return (state.rate / state.rate.mean().clamp_min(1e-12)).clamp(cfg.min_weight, cfg.max_weight)

    def observe_residual(self, state: TokenRateState, residual: torch.Tensor) -> None:
        state.latest = residual

    def on_computed(self, state: TokenRateState, blocks: torch.Tensor | None) -> None:
        cfg = self.config
        lay = state.layout
        tokens = slice(None) if blocks is None else lay.tokens_of(blocks)
        latest = state.latest
        if latest is None:  # no residual reported (a runtime without it): plain need reset
            state.since[tokens] = 0.0
            return
        if state.reference is None:
            state.reference = latest.clone()
        else:
            update_token_rates(state.rate, state.reference, latest, tokens, state.since[tokens], cfg.rate_smoothing)
            state.reference[tokens] = latest[tokens]
        state.since[tokens] = 0.0
        state.latest = None
        if state.step >= cfg.warmup_steps:
            state.updates += 1

    def steps_until_recompute(self, state: TokenRateState) -> torch.Tensor:
        lay = state.layout
        weights = self.weights(state)
        need = weights * state.since
        per_block = lay.block_mean(need)
        rate = lay.block_mean(weights)
        step = max(float(state.since.max()), 1e-6) / max(state.step, 1)  # mean distance per step, roughly
        return (self.config.threshold - per_block).clamp_min(0.0) / (rate * step).clamp_min(1e-9)
