"""``none``: full compute every step (the chunked runtime still reuses finished chunks' K/V)."""

from __future__ import annotations

from motioncache_vllm.config import NoneConfig
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation


class NonePolicy(CachePolicy):
    name = "none"
    config_cls = NoneConfig
    description = "full compute every step"

    def decide(self, state: PolicyState, obs: StepObservation) -> Decision:
        return Decision.full()
