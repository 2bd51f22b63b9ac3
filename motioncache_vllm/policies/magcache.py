"""``magcache``: MagCache's skip rule (Ma et al. 2025; diffusers' ``MagCacheConfig``), per chunk.

The ratio ``gamma_i = mean_tokens(|R_i| / |R_{i-1}|)`` of block-stack residual magnitudes
between consecutive steps is nearly a property of the model and schedule, so it is
calibrated once (``motioncache calibrate`` stores it per schedule length). Per (chunk,
branch), after the first ``retention_ratio`` of the steps, a skipped step multiplies the
ratios into ``acc``, adds ``|1 - acc|`` to the accumulated error, and the step is skipped
while that error stays <= ``threshold`` and at most ``max_skip_steps`` steps were skipped in
a row; otherwise it is computed and the accumulators restart. Whole steps only (no
spatial blocks): the peer to measure the per-token policies against on the same runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from motioncache_vllm.config import MagCacheConfig
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation
from motioncache_vllm.policies.calibration import ResampledRatios


@dataclass
class MagState(PolicyState):
    acc_ratio: float = 1.0
    acc_error: float = 0.0
    acc_steps: int = 0

    def reset(self) -> None:
        super().reset()
        self.restart()

    def restart(self) -> None:
        """A computed step: the cached residual is fresh again."""
        self.acc_ratio, self.acc_error, self.acc_steps = 1.0, 0.0, 0


class MagCachePolicy(CachePolicy):
    name = "magcache"
    config_cls = MagCacheConfig
    description = "MagCache: skip steps while calibrated residual-magnitude ratios stay near 1"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        own = self.config.mag_ratios
        mag_ratios = {len(own): tuple(own)} if own else self.model_mag_ratios
        self.ratios: ResampledRatios | None = ResampledRatios(mag_ratios) if mag_ratios is not None else None

    def new_state(self, layout) -> MagState:
        return MagState(layout)

    def decide(self, state: MagState, obs: StepObservation) -> Decision:
        cfg = self.config
        steps = obs.num_steps
        if self.ratios is None or not steps:
            return Decision.full()  # nothing calibrated: never guess
        if state.step < int(cfg.retention_ratio * steps + 0.5) or state.step == 0:
            return Decision.full()
        state.acc_ratio *= self.ratios.at(steps, state.step)
        state.acc_steps += 1
        state.acc_error += abs(1.0 - state.acc_ratio)
        if state.acc_error <= cfg.threshold and state.acc_steps <= cfg.max_skip_steps:
            return Decision.skip()
        state.restart()
        return Decision.full()

    def on_computed(self, state: MagState, blocks) -> None:
        if blocks is None:  # a full step forced by a pool miss refreshes the residual too
            state.restart()
