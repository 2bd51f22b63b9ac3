"""The policy interface: a policy decides, the runtime executes, the pool stores.

One policy object serves many (request, chunk, CFG branch) streams; everything that
changes from step to step lives in a :class:`PolicyState` made by ``new_state`` and
cleared by ``reset()``. Per step the runtime hands the policy a :class:`StepObservation`
and gets a :class:`Decision` back; after executing it reports which blocks were really
recomputed (a decision may be widened when cached blocks were evicted).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.config import PolicyConfigBase
from motioncache_vllm.policies.calibration import IDENTITY_COEFFICIENTS, Rescaler

Mode = Literal["full", "skip", "partial"]


@dataclass
class StepObservation:
    """What the policy may look at before the block stack runs.

    Attributes:
        e0: timestep modulation of the chunk (the blocks' ``temb``), any shape.
        hidden: (F, P, C) block-stack input of the chunk (after patch embedding).
        previous_last_frame: (P, C) input of the previous chunk's last frame, or None.
        num_steps: the chunk's number of denoising steps (step index = the state's ``step``).
        sigmas: the chunk's noise schedule, ``num_steps + 1`` values (flow matching: step
            ``k`` moves the latent by ``(sigma_(k+1) - sigma_k) * v``), or None for a
            scheduler without sigmas.
        guidance_scale: the CFG scale g of the guided prediction ``v_u + g (v_c - v_u)``
            (<= 1: one branch, no guidance).
    """

    e0: torch.Tensor
    hidden: torch.Tensor
    previous_last_frame: torch.Tensor | None
    num_steps: int | None = None  # denoising steps of this chunk's schedule
    sigmas: tuple[float, ...] | None = None
    guidance_scale: float = 1.0


@dataclass(frozen=True)
class Decision:
    mode: Mode
    blocks: torch.Tensor | None = None  # (num_blocks,) bool, for "partial"

    @staticmethod
    def full() -> Decision:
        return Decision("full")

    @staticmethod
    def skip() -> Decision:
        return Decision("skip")


@dataclass
class PolicyState:
    """Per (request, chunk, branch) state. Subclasses add fields and extend ``reset``."""

    layout: ChunkLayout
    step: int = 0
    updates: int = 0  # compute events after warm-up
    previous_e0: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)
    stream_key: tuple | None = None  # (request, branch), the same for every chunk of a stream; set by the runtime
    # with shared CFG decisions (``shares_cfg_decisions``), on the deciding (cond) branch's
    # state: the unconditional branch's state, whose residuals the runtime reports before
    # both states' ``end_step`` (a policy may weigh both branches); set by the runtime
    partner: "PolicyState | None" = None

    def reset(self) -> None:
        self.step, self.updates, self.previous_e0 = 0, 0, None


class CachePolicy(ABC):
    """Base class: subclasses set ``name``, ``config_cls`` and implement ``decide``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[PolicyConfigBase]]
    description: ClassVar[str] = ""
    # True: the unconditional CFG branch always executes the conditional branch's decision
    # (as the pool's ``cfg_shared``). For a policy whose per-branch state may pick different
    # blocks: a block fresh in one branch and stale in the other puts the staleness into
    # cond - uncond, which the guidance scale amplifies (magrefresh: 16.9 vs 27.4 dB on a pan)
    shares_cfg_decisions: ClassVar[bool] = False

    def __init__(
        self,
        config: PolicyConfigBase | None = None,
        model_coefficients: tuple[float, ...] | None = None,
        model_fit_range: tuple[float, float] | None = None,
        model_mag_ratios: dict[int, tuple[float, ...]] | None = None,
        model_guided_change: dict[int, tuple[float, ...]] | None = None,
        model_skip_sensitivity: dict[int, tuple[float, ...]] | None = None,
    ):
        """``model_coefficients``: the model's calibrated rescale polynomial, if it has one;
        ``model_fit_range``: the x range it was fitted on (linear continuation outside);
        ``model_mag_ratios``: its MagCache ratios per schedule length (see policies/magcache.py);
        ``model_guided_change``: its measured per-step change of the guided residual per
        schedule length (see policies/calibration.py, ``GuidedChange``);
        ``model_skip_sensitivity``: its measured amplification of a one-step skip's error per
        step (``SkipSensitivity``)."""
        self.config = config if config is not None else self.config_cls()
        self.model_coefficients = model_coefficients
        self.model_mag_ratios = model_mag_ratios
        self.model_guided_change = model_guided_change
        self.model_skip_sensitivity = model_skip_sensitivity
        # d = poly(relL1(e0)): the policy's own coefficients, else the model's, else identity
        own = getattr(self.config, "coefficients", None)
        if own:
            self.rescale = Rescaler(tuple(own))
        elif model_coefficients:
            self.rescale = Rescaler(tuple(model_coefficients), model_fit_range)
        else:
            self.rescale = Rescaler(IDENTITY_COEFFICIENTS)

    def new_state(self, layout: ChunkLayout) -> PolicyState:
        return PolicyState(layout)

    @abstractmethod
    def decide(self, state: PolicyState, obs: StepObservation) -> Decision:
        """Choose what to compute this step. Must not assume the decision is executed as is."""

    def on_computed(self, state: PolicyState, blocks: torch.Tensor | None) -> None:
        """Blocks (bool mask; None = all) whose residuals were just recomputed."""

    def observe_residual(self, state: PolicyState, residual: torch.Tensor) -> None:
        """The block-stack residual after a computed step, before ``on_computed``: fresh
        everywhere after a full step, fresh on the recomputed blocks after a partial one."""

    def correct_reused(self, state: PolicyState, residual: torch.Tensor) -> None:
        """At a step that reuses cached residuals: ``residual`` (N, C) as read from the pool,
        before a partial step writes its recomputed tokens over it; a policy may correct the
        reused values in place (the pool keeps what was computed). Default: reuse as is."""

    def end_step(self, state: PolicyState) -> None:
        state.step += 1

    def steps_until_recompute(self, state: PolicyState) -> torch.Tensor | None:
        """Estimated steps until each block is recomputed anyway (eviction order), or None."""
        return None


def update_token_rates(
    rate: torch.Tensor,
    reference: torch.Tensor,
    latest: torch.Tensor,
    tokens: torch.Tensor | slice,
    since: torch.Tensor,
    smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rates (``tokenrate``, ``magrefresh``): each recomputed token's residual change
    since its last compute, relative to the step's mean residual magnitude, per unit of
    ``since`` (its distance since then), blended into ``rate`` with weight ``smoothing``
    where ``since > 0``. Returns the measurement and where it was valid; the caller moves
    ``reference`` on."""
    measured = (latest[tokens] - reference[tokens]).abs().mean(-1)
    measured = measured / (latest.abs().mean() + 1e-12) / since.clamp_min(1e-6)
    valid = since > 0
    old = rate[tokens]
    rate[tokens] = torch.where(valid, (1 - smoothing) * old + smoothing * measured, old)
    return measured, valid
