"""Fit the TeaCache-style rescale polynomial of a model (``motioncache calibrate``), and
record MagCache's magnitude ratios.

Over full-compute trajectories of a few prompts, per (chunk, branch) and step, record
``x = relL1(e0_t, e0_{t-1})`` (what the policies can see before computing) and
``y = relL1(R_t, R_{t-1})`` (how much the block-stack residual really changed), then
fit ``y ~ poly(x)`` by least squares, as TeaCache does. From the same runs, per schedule
length and step i, MagCache's ratio ``mean_tokens(|R_i| / |R_{i-1}|)`` averaged over chunks,
branches and prompts. And, for ``steperror``'s ``schedule="measured"``, per schedule length
and step k the mean change of the guided residual ``g R_c + (1 - g) R_u`` from step k-1
(each chunk's curve scaled to mean 1, then averaged). The result is stored beside the model's weights as
``motioncache_calibration.json`` and picked up automatically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from motioncache_vllm.config import GenerationRequest
from motioncache_vllm.motion import relative_l1
from motioncache_vllm.policies.base import Decision, PolicyState
from motioncache_vllm.policies.calibration import CALIBRATION_FILE, magnitude_ratios
from motioncache_vllm.policies.none import NonePolicy


@dataclass
class _RecordingState(PolicyState):
    previous_residual: torch.Tensor | None = None
    pending_x: float | None = None
    samples: list = field(default_factory=list)
    norms: list = field(default_factory=list)  # per step: |R| of every token
    residuals: list = field(default_factory=list)  # per step: the residual (for the guided change)


class _RecordingPolicy(NonePolicy):
    """Full compute, recording (x, y) pairs; not registered (a tool, not a cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[tuple[float, float]] = []
        self.finished_norms: list[list[torch.Tensor]] = []  # one list per (chunk, branch)
        self.finished_states: list[_RecordingState] = []

    def new_state(self, layout) -> _RecordingState:
        state = _RecordingState(layout)
        self.finished_norms.append(state.norms)
        self.finished_states.append(state)
        return state

    def decide(self, state: _RecordingState, obs):
        state.pending_x = None if state.previous_e0 is None else relative_l1(obs.e0, state.previous_e0)
        state.previous_e0 = obs.e0
        return super().decide(state, obs)

    def observe_residual(self, state: _RecordingState, residual: torch.Tensor) -> None:
        if state.pending_x is not None and state.previous_residual is not None:
            self.samples.append((state.pending_x, relative_l1(residual, state.previous_residual)))
        state.previous_residual = residual.clone()
        state.norms.append(torch.linalg.norm(residual.float(), dim=-1))
        state.residuals.append(state.previous_residual.float())


def _guided_residuals(states: list[_RecordingState], guidance: float) -> list[list[torch.Tensor]]:
    """Per chunk of one run (its cond and uncond states, in the runtime's order): the guided
    residual ``g R_c + (1 - g) R_u`` at every step (``R_c`` alone without CFG)."""
    branches: dict[str, list[_RecordingState]] = {}
    for state in states:
        branches.setdefault(state.stream_key[1] if state.stream_key else "cond", []).append(state)
    uncond = branches.get("uncond")
    return [
        [guidance * c + (1.0 - guidance) * u for c, u in zip(cond.residuals, uncond[i].residuals)]
        if uncond
        else list(cond.residuals)
        for i, cond in enumerate(branches.get("cond", []))
    ]


def guided_change_curves(states: list[_RecordingState], guidance: float) -> list[list[float]]:
    """Per chunk of one run: the mean absolute change of the guided residual from each step to
    the next, scaled to mean 1 (only the shape is used; a chunk's overall scale is the clip's,
    which the policy measures)."""
    curves = []
    for guided in _guided_residuals(states, guidance):
        change = [float((cur - prev).abs().mean()) for prev, cur in zip(guided, guided[1:])]
        scale = float(np.mean(change)) if change else 0.0
        if scale > 0:
            curves.append([c / scale for c in change])
    return curves


def calibrate(
    pipe,
    prompts: list[str],
    degree: int = 4,
    num_frames: int | None = None,
    seed: int = 0,
    steps: tuple[int | None, ...] = (None,),
) -> dict:
    """Run full compute on ``prompts`` (with each schedule length in ``steps``; None = the
    model's default) and fit the polynomial; returns the calibration record.

    Several schedule lengths widen the fitted x range: a 10-step schedule changes e0 about
    three times as much per step as a 30-step one."""
    from motioncache_vllm.runtime.chunked import ChunkedRunner
    from motioncache_vllm.runtime.request import make_pool
    from motioncache_vllm.config import PoolConfig

    policy = _RecordingPolicy()
    jobs = [(i, prompt, n) for n in steps for i, prompt in enumerate(prompts)]
    ratios_by_length: dict[int, list[list[float]]] = {}
    change_by_length: dict[int, list[list[float]]] = {}
    for i, prompt, n in jobs:
        r, embeds, latents = _prepared(pipe, prompt, num_frames, n, seed + i)
        policy.finished_norms.clear()
        policy.finished_states.clear()
        ChunkedRunner(pipe, policy, make_pool(pipe, PoolConfig())).denoise(embeds, latents, r.steps, r.guidance)
        for norms in policy.finished_norms:  # one (chunk, branch) stream: r.steps residuals
            ratios_by_length.setdefault(r.steps, []).append(magnitude_ratios(norms))
        change_by_length.setdefault(r.steps, []).extend(guided_change_curves(policy.finished_states, r.guidance))
        policy.finished_states.clear()  # the residuals are not needed any more
    x, y = np.array(policy.samples).T
    coefficients, used = monotone_polyfit(x, y, degree)
    fitted = np.poly1d(coefficients)(x)
    return {
        "coefficients": coefficients.tolist(),
        "degree": used,
        "requested_degree": degree,
        "samples": len(x),
        "x_range": [float(x.min()), float(x.max())],
        "y_mean": float(y.mean()),
        "r2": float(1 - ((y - fitted) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)),
        "prompts": prompts,
        "steps": [r for r in steps],
        "mag_ratios": {str(n): np.mean(rows, axis=0).round(5).tolist() for n, rows in sorted(ratios_by_length.items())},
        "guided_change": {
            str(n): _first_repeated(np.mean(rows, axis=0)) for n, rows in sorted(change_by_length.items())
        },
    }


def _first_repeated(curve: np.ndarray) -> list[float]:
    """Steps 1..n-1's changes as a per-step curve of n entries, entry 0 = entry 1 (see
    ``GuidedChange``)."""
    curve = curve.round(5).tolist()
    return curve[:1] + curve


def _prepared(pipe, prompt: str, num_frames: int | None, steps: int | None, seed: int):
    """(resolved request, prompt embeddings per CFG branch, initial latents) of one run."""
    from motioncache_vllm.runtime.request import resolve, seeded_generator

    r = resolve(pipe, GenerationRequest(prompt=prompt, num_frames=num_frames, num_inference_steps=steps, seed=seed))
    generator = seeded_generator(r.seed)
    pipe._guidance_scale = r.guidance
    cond, uncond = pipe.encode_prompt(
        r.prompt,
        None,
        do_classifier_free_guidance=r.guidance > 1.0,
        num_videos_per_prompt=1,
        max_sequence_length=r.max_sequence_length,
        device=pipe._execution_device,
    )
    latents = pipe.prepare_latents(
        1,
        pipe.transformer.config.in_channels,
        r.height,
        r.width,
        pipe.padded_num_frames(r.num_frames),
        torch.float32,
        pipe._execution_device,
        generator,
    )[0]
    return r, {"cond": cond} | ({"uncond": uncond} if uncond is not None else {}), latents


class _SkipOnePolicy(NonePolicy):
    """Full compute except step ``k`` of every chunk, skipped by both CFG branches."""

    shares_cfg_decisions = True

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def decide(self, state, obs) -> Decision:
        return Decision.skip() if state.step == self.k else Decision.full()


def skip_sensitivity(
    pipe, prompts: list[str], steps: int, num_frames: int | None = None, seed: int = 0, first: int = 2
) -> list[float]:
    """``steperror``'s measured second-order term for a ``steps``-long schedule (see
    ``SkipSensitivity``): per prompt, one full-compute run (the reference and each step's
    first-order error ``|sigma_k - sigma_(k+1)| x mean|G_k - G_(k-1)|``, G the guided residual,
    averaged over chunks), then one run per step ``k >= first`` that skips step k alone; the
    final latents' mean absolute error over the first-order one, scaled to mean 1 per prompt,
    then averaged over prompts. One run per step and prompt: slow, so only on request."""
    from motioncache_vllm.config import PoolConfig
    from motioncache_vllm.runtime.chunked import ChunkedRunner
    from motioncache_vllm.runtime.request import make_pool

    def run(policy, r, embeds, latents) -> tuple[torch.Tensor, list[float]]:
        x = latents.clone()
        denoising = ChunkedRunner(pipe, policy, make_pool(pipe, PoolConfig())).start(embeds, x, r.steps, r.guidance)
        try:
            while not denoising.done:
                denoising.step()
        finally:
            denoising.close()
        return x, [float(s) for s in denoising.sigmas]

    per_prompt = []
    for i, prompt in enumerate(prompts):
        r, embeds, latents = _prepared(pipe, prompt, num_frames, steps, seed + i)
        recorder = _RecordingPolicy()
        reference, sigmas = run(recorder, r, embeds, latents)
        guided = _guided_residuals(recorder.finished_states, r.guidance)
        ratios = []
        for k in range(first, r.steps):
            change = float(np.mean([float((g[k] - g[k - 1]).abs().mean()) for g in guided]))
            skipped, _ = run(_SkipOnePolicy(k), r, embeds, latents)
            immediate = abs(sigmas[k] - sigmas[k + 1]) * change
            ratios.append(float((skipped - reference).abs().mean()) / max(immediate, 1e-12))
        per_prompt.append(np.array(ratios) / np.mean(ratios))  # each prompt's shape counts alike
    curve = np.mean(per_prompt, axis=0).round(5).tolist()
    return curve[:1] * first + curve


def monotone_polyfit(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, int]:
    """Least-squares polynomial of the highest degree <= ``degree`` that does not decrease
    over the fitted x range: a policy must never read a larger e0 change as a smaller
    output change (the embedded model's degree-4 fit turns over twice inside its data)."""
    grid = np.linspace(x.min(), x.max(), 256)
    for d in range(degree, 0, -1):
        coefficients = np.polyfit(x, y, d)
        if np.all(np.diff(np.poly1d(coefficients)(grid)) >= -1e-9):
            return coefficients, d
    return coefficients, 1  # a line fitted to data that falls: keep it, the clamp at 0 applies


def save_calibration(record: dict, model_dir: str | Path) -> Path:
    path = Path(model_dir) / CALIBRATION_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
