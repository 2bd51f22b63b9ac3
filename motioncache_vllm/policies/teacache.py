"""``teacache``: step-level reuse per chunk (TeaCache, Liu et al. 2024), as a baseline.

Per (chunk, branch): accumulate ``d = poly(relL1(e0_t, e0_prev))``; while the sum stays
below ``threshold`` the whole block stack is skipped (``h_out = h_in + R``), otherwise
everything is recomputed and the sum restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motioncache_vllm.config import TeaCacheConfig
from motioncache_vllm.motion import relative_l1
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation


@dataclass
class TeaCacheState(PolicyState):
    accumulated: float = 0.0
    last_distance: float = 0.0

    def reset(self) -> None:
        super().reset()
        self.accumulated = self.last_distance = 0.0


class TeaCachePolicy(CachePolicy):
    name = "teacache"
    config_cls = TeaCacheConfig
    description = "step-level reuse per chunk (TeaCache)"

    def new_state(self, layout) -> TeaCacheState:
        return TeaCacheState(layout)

    def decide(self, state: TeaCacheState, obs: StepObservation) -> Decision:
        previous, state.previous_e0 = state.previous_e0, obs.e0
        if state.step < self.config.warmup_steps or previous is None:
            return Decision.full()
        state.last_distance = self.rescale(relative_l1(obs.e0, previous))
        state.accumulated += state.last_distance
        return Decision.skip() if state.accumulated < self.config.threshold else Decision.full()

    def on_computed(self, state: TeaCacheState, blocks: torch.Tensor | None) -> None:
        if blocks is None:
            state.accumulated = 0.0
            if state.step >= self.config.warmup_steps:
                state.updates += 1

    def steps_until_recompute(self, state: TeaCacheState) -> torch.Tensor:
        rate = max(state.last_distance, 1e-6)
        left = max(self.config.threshold - state.accumulated, 0.0) / rate
        return torch.full((state.layout.num_blocks,), left)
