"""``motion``: MotionCache (arXiv 2605.01725) = FlowCache + per-token motion weights.

Phase 1: ``W = 1`` until ``phase1_updates`` compute events (after warm-up) happened.
Phase 2: every step, ``W`` comes from inter-frame differences of the block-stack input
(frame 0 against the previous chunk's last frame), min-max normalised per frame into
``[alpha, 1]``: static regions accumulate need more slowly and are reused longer.
``alpha = 1`` is exactly FlowCache.
"""

from __future__ import annotations

import torch

from motioncache_vllm.config import MotionConfig
from motioncache_vllm.motion import inter_frame_motion, motion_weights
from motioncache_vllm.policies.base import StepObservation
from motioncache_vllm.policies.flowcache import AccumulatorState, FlowCachePolicy


class MotionPolicy(FlowCachePolicy):
    name = "motion"
    config_cls = MotionConfig
    description = "MotionCache: FlowCache with motion-weighted need (paper defaults)"

    def token_weights(self, state: AccumulatorState, obs: StepObservation) -> torch.Tensor:
        if state.updates < self.config.phase1_updates:
            return state.weights
        motion = inter_frame_motion(obs.hidden, obs.previous_last_frame)
        return motion_weights(motion, self.config.alpha).flatten()
