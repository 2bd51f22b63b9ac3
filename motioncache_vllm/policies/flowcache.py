"""``flowcache``: token-level reuse per chunk (FlowCache), the base MotionCache extends.

Per (chunk, branch), every token ``p`` keeps an accumulator ``A[p]``. Each step after
warm-up adds ``d * W[p]`` with ``d = poly(relL1(e0_t, e0_prev))`` (FlowCache: ``W = 1``).
A token needs an update when ``A[p] >= threshold``; a spatial block is recomputed (in
all frames of the chunk) when at least ``vote_fraction`` of its tokens need it (the
temporal majority vote). When fewer than ``min_update_ratio`` of the blocks are
selected the step is skipped entirely and ``A`` kept, so work is batched into
worthwhile partial steps. Recomputed blocks restart at ``A = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motioncache_vllm.config import FlowCacheConfig
from motioncache_vllm.motion import relative_l1
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation


@dataclass
class AccumulatorState(PolicyState):
    need: torch.Tensor | None = None  # A, (F*P,)
    weights: torch.Tensor | None = None  # W, (F*P,)
    last_distance: float = 0.0

    def reset(self) -> None:
        super().reset()
        self.need = torch.zeros(self.layout.num_tokens)
        self.weights = torch.ones(self.layout.num_tokens)
        self.last_distance = 0.0

    def __post_init__(self) -> None:
        self.reset()


class FlowCachePolicy(CachePolicy):
    name = "flowcache"
    config_cls = FlowCacheConfig
    description = "token-level reuse per chunk (FlowCache, W = 1)"

    def new_state(self, layout) -> AccumulatorState:
        return AccumulatorState(layout)

    def token_weights(self, state: AccumulatorState, obs: StepObservation) -> torch.Tensor:
        """W per token; FlowCache weighs every token equally."""
        return state.weights

    def decide(self, state: AccumulatorState, obs: StepObservation) -> Decision:
        cfg = self.config
        previous, state.previous_e0 = state.previous_e0, obs.e0
        if state.step < cfg.warmup_steps or previous is None:
            return Decision.full()
        state.last_distance = self.rescale(relative_l1(obs.e0, previous))
        state.weights = self.token_weights(state, obs)
        state.need += state.last_distance * state.weights
        wanted = state.layout.block_fraction(state.need >= cfg.threshold) >= cfg.vote_fraction
        ratio = float(wanted.float().mean())
        if ratio == 0.0 or ratio < cfg.min_update_ratio:
            return Decision.skip()
        return Decision.full() if ratio == 1.0 else Decision("partial", wanted)

    def on_computed(self, state: AccumulatorState, blocks: torch.Tensor | None) -> None:
        if blocks is None:
            state.need.zero_()
        else:
            state.need[state.layout.tokens_of(blocks)] = 0.0
        if state.step >= self.config.warmup_steps:
            state.updates += 1

    def steps_until_recompute(self, state: AccumulatorState) -> torch.Tensor:
        layout = state.layout
        mean_need = torch.zeros(layout.num_blocks).index_add_(0, layout.block_of_token, state.need)
        mean_weight = torch.zeros(layout.num_blocks).index_add_(0, layout.block_of_token, state.weights)
        mean_need, mean_weight = mean_need / layout.block_sizes, mean_weight / layout.block_sizes
        rate = (max(state.last_distance, 1e-6) * mean_weight).clamp_min(1e-9)
        return (self.config.threshold - mean_need).clamp_min(0.0) / rate
