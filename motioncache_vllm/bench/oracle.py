"""``motioncache bench oracle``: how much could a spatial cache gain on this model?

Every denoising step of a real generation first runs a *peek*: a full forward of the
chunk that yields the true block-stack residual ``R*`` of the step. An oracle policy then
compares ``R*`` with the residual the cache holds (``R``, the last step's assembled
residual) and decides, and the step runs as that decision says (the real selective
forward for partial steps). Oracles, each swept over thresholds ``tau``:

- ``step``: skip the whole step while ``relL1(R*, R) < tau``, else compute everything
  (the best any whole-step cache - TeaCache, MagCache - could do with this budget);
- ``block/stale``: recompute the blocks whose own change ``mean|R*_b - R_b| / mean|R*|``
  is ``>= tau``, the others reused; the unselected tokens' K/V stay as the last step left
  them (what the runtime does);
- ``block/fresh``: the same, but the unselected tokens' K/V are the fresh ones of the
  peek. Then the selected tokens' outputs equal the full step's (tested), so the gap
  between ``fresh`` and ``stale`` at equal work is the cost of stale context.

Those rank by the *relative* change of the residual, which says little about what a step
does to the video (the step oracle is not even monotone in work). ``criterion="dt"``
ranks by the output error instead: the flow-matching update is ``x += dt_k * v``, so
reusing ``R`` where the truth is ``R*`` moves the latent, to first order, by
``dt_k * (R* - R)`` through the guided prediction ``v = v_u + g (v_c - v_u)``. Per token
``e_k = |dt_k| * mean_c |g (R*_c - R_c) + (1 - g) (R*_u - R_u)|`` (one branch without
CFG), summed over the steps since the token was last computed (``A``); both branches
execute one decision (a block fresh in one branch and stale in the other is amplified by
``g``). ``step-dt``: skip while ``mean(A + e_k) < tau``; ``block-dt``: recompute the blocks
whose mean of ``A + e_k`` is ``>= tau``. ``tau`` is absolute (hidden-state units x sigma).

PSNR against full compute of the same seed, over the work actually done (``ideal``:
token passes, as the runtime counts them). A ``record`` pass (full compute, which is
also the reference video) measures how well cheap per-token signals, available before a
step runs, rank the tokens' true residual change (Spearman across tokens, per step).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np
import torch

from motioncache_vllm.motion import inter_frame_motion
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation

OracleMode = Literal["record", "step", "block"]
Criterion = Literal["relative", "dt"]
Context = Literal["stale", "fresh"]
PROXIES = ("input_change", "first_block_change", "previous_change", "motion")


class OracleConfig(msgspec.Struct, frozen=True, kw_only=True):
    mode: OracleMode = "record"
    threshold: float = 0.1
    warmup_steps: int = 4
    criterion: Criterion = "relative"  # "dt": the output error (see the module docstring)
    trace: bool = False  # dt: keep every decision's inputs in the state (tests)


@dataclass
class OracleState(PolicyState):
    truth: torch.Tensor | None = None  # (N, C) full-forward residual of this step (the peek's)
    cached: torch.Tensor | None = None  # (N, C) residual the cache holds (last step's assembled one)
    previous_input: torch.Tensor | None = None
    previous_first_block: torch.Tensor | None = None
    previous_residual: torch.Tensor | None = None
    previous_change: torch.Tensor | None = None
    pending: dict | None = None  # proxies of this step, scored once the residual is known
    records: list = field(default_factory=list)
    truth_step: int = -1  # the step whose peek ``truth`` is
    # dt criterion (the CFG leader's state): the follower's state, the per-token output error
    # accumulated since each token was last computed, this step's own error, computed tokens
    partner: "OracleState | None" = None
    accumulated: torch.Tensor | None = None
    step_error: torch.Tensor | None = None
    computed: torch.Tensor | slice | None = None
    trace: list = field(default_factory=list)


def _token_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-token mean |a - b| over channels: (N, C) -> (N,)."""
    return (a - b).abs().mean(-1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks not needed: continuous data)."""
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0


def top_share(change: torch.Tensor, fraction: float = 0.3) -> float:
    """Share of the total change carried by the top ``fraction`` of tokens (uniform = fraction)."""
    k = max(int(round(fraction * change.numel())), 1)
    total = float(change.sum())
    return float(change.topk(k).values.sum()) / total if total > 0 else fraction


class OraclePolicy(CachePolicy):
    """Decides from the true residual of the step (see module docstring); not registered."""

    name = "oracle"
    config_cls = OracleConfig

    def __init__(self, config: OracleConfig | None = None, step_sizes=None, guidance_scale: float = 1.0) -> None:
        """``step_sizes``: ``|sigma_k - sigma_(k+1)|`` per step of the schedule (dt criterion);
        ``guidance_scale``: the CFG scale g of the guided prediction."""
        super().__init__(config)
        self.step_sizes = None if step_sizes is None else [float(d) for d in step_sizes]
        self.guidance_scale = guidance_scale

    def new_state(self, layout) -> OracleState:
        return OracleState(layout)

    def decide(self, state: OracleState, obs: StepObservation) -> Decision:
        cfg = self.config
        if cfg.mode == "record":
            state.pending = {"obs": obs}
            return Decision.full()
        if cfg.criterion == "dt":
            return self._decide_dt(state)
        if state.step < cfg.warmup_steps or state.cached is None:
            return Decision.full()
        scale = float(state.truth.abs().mean()) + 1e-12
        if cfg.mode == "step":
            change = float((state.truth - state.cached).abs().mean()) / scale
            return Decision.full() if change >= cfg.threshold else Decision.skip()
        lay = state.layout
        per_token = _token_change(state.truth, state.cached)
        per_block = torch.zeros(lay.num_blocks).index_add_(0, lay.block_of_token, per_token) / lay.block_sizes
        wanted = per_block / scale >= cfg.threshold
        if not bool(wanted.any()):
            return Decision.skip()
        return Decision.full() if bool(wanted.all()) else Decision("partial", wanted)

    def step_error(self, state: OracleState) -> torch.Tensor:
        """(N,) first-order latent error of reusing the cached residual at this step, per token."""
        delta = state.truth - state.cached
        partner = state.partner
        if partner is not None:  # v = v_u + g (v_c - v_u): the reused part of both branches, guided
            g = self.guidance_scale
            delta = g * delta + (1.0 - g) * (partner.truth - partner.cached)
        return self.step_sizes[state.step] * delta.abs().mean(-1)

    def _decide_dt(self, state: OracleState) -> Decision:
        cfg = self.config
        ready = state.cached is not None and (state.partner is None or state.partner.cached is not None)
        if state.step < max(cfg.warmup_steps, 1) or not ready:
            state.step_error = None
            return Decision.full()
        if state.accumulated is None:
            state.accumulated = torch.zeros(state.truth.shape[0])
        e = state.step_error = self.step_error(state)
        total = state.accumulated + e
        if cfg.mode == "step":
            decision = Decision.full() if float(total.mean()) >= cfg.threshold else Decision.skip()
        else:
            lay = state.layout
            per_block = torch.zeros(lay.num_blocks).index_add_(0, lay.block_of_token, total) / lay.block_sizes
            wanted = per_block >= cfg.threshold
            if not bool(wanted.any()):
                decision = Decision.skip()
            else:
                decision = Decision.full() if bool(wanted.all()) else Decision("partial", wanted)
        if cfg.trace:
            p = state.partner
            state.trace.append(
                {
                    "step": state.step,
                    "truth": state.truth.clone(),
                    "cached": state.cached.clone(),
                    "partner_truth": None if p is None else p.truth.clone(),
                    "partner_cached": None if p is None else p.cached.clone(),
                    "decision": decision,
                }
            )
        return decision

    def on_computed(self, state: OracleState, blocks: torch.Tensor | None) -> None:
        if self.config.criterion == "dt":
            state.computed = slice(None) if blocks is None else state.layout.tokens_of(blocks)

    def end_step(self, state: OracleState) -> None:
        """dt: the error of this step's reused tokens joins their sum; computed tokens start over."""
        if state.step_error is not None:
            state.accumulated += state.step_error
            if state.computed is not None:
                state.accumulated[state.computed] = 0.0
        state.step_error, state.computed = None, None
        super().end_step(state)

    def record(self, state: OracleState, first_block: torch.Tensor, residual: torch.Tensor) -> None:
        """Record mode, after a full step: score the proxies (known before the step) against
        the true per-token change of the residual."""
        from motioncache_vllm.motion import relative_l1

        obs: StepObservation = state.pending["obs"]
        hidden = obs.hidden.reshape(-1, obs.hidden.shape[-1])
        if state.previous_residual is not None:
            change = _token_change(residual, state.previous_residual)
            if state.previous_change is not None and state.step >= self.config.warmup_steps:
                proxies = {
                    "input_change": _token_change(hidden, state.previous_input),
                    "first_block_change": _token_change(first_block, state.previous_first_block),
                    "previous_change": state.previous_change,
                    "motion": inter_frame_motion(obs.hidden, obs.previous_last_frame).flatten(),
                }
                row = {
                    "step": state.step,
                    "schedule": relative_l1(obs.e0, state.previous_e0),
                    "mean_change": float(change.mean() / (residual.abs().mean() + 1e-12)),
                    "top30_share": top_share(change),
                }
                row.update({name: spearman(value, change) for name, value in proxies.items()})
                state.records.append(row)
            state.previous_change = change
        state.previous_residual, state.previous_input = residual.clone(), hidden.clone()
        state.previous_first_block, state.previous_e0 = first_block, obs.e0


def _runner_class():
    from motioncache_vllm.runtime.chunked import ChunkedRunner

    class OracleRunner(ChunkedRunner):
        """A runner whose every denoising call is preceded by a full *peek* forward."""

        def __init__(self, pipe, policy: OraclePolicy, pool, context: Context = "stale") -> None:
            super().__init__(pipe, policy, pool)
            self.context = context
            # per partial step: max |partial - full| on the selected tokens / max |full|
            self.selected_errors: list[float] = []
            self.peek_calls = 0

        def run_calls(self, calls) -> None:
            """dt criterion: every branch peeks before any decides (the leader's decision
            weighs both branches' errors); then the calls run as usual."""
            if self.policy.config.mode != "record" and self.policy.config.criterion == "dt":
                for call in calls:
                    if not call.stream.commit:
                        self._peek(call.stream, call.x, call.t, call.embeds)
                for call in calls:
                    if call.stream.follower is not None:
                        call.stream.state.partner = call.stream.follower.state
            super().run_calls(calls)

        def _peek(self, stream, x, t, embeds) -> None:
            """A full forward of the step: its residual is the state's ``truth``; with stale
            context the chunk's K/V are put back as the last step left them."""
            state = stream.state
            kv = stream.kv
            layers = range(self.adapter.num_layers)
            saved = None
            if self.context == "stale":
                saved = [
                    (
                        kv.keys(i)[:, stream.start : stream.end].clone(),
                        kv.values(i)[:, stream.start : stream.end].clone(),
                    )
                    for i in layers
                ]
            peek = _Peek(stream)
            self._forward(peek, x, t, embeds)
            self.peek_calls += 1
            state.truth, state.truth_step = peek.residual, state.step
            if saved is not None:
                for i, (k, v) in zip(layers, saved):
                    kv.keys(i)[:, stream.start : stream.end] = k
                    kv.values(i)[:, stream.start : stream.end] = v

        def _call(self, stream, x, t, embeds):
            state = stream.state
            if stream.commit:
                return super()._call(stream, x, t, embeds)
            record = self.policy.config.mode == "record"
            if not record:
                if state.truth_step != state.step:
                    self._peek(stream, x, t, embeds)
                out = super()._call(stream, x, t, embeds)
                if stream._mode == "partial":  # selected tokens: partial step against the full one
                    tokens = stream.layout.tokens_of(stream._blocks)
                    err = (stream.residual[tokens] - state.truth[tokens]).abs().max()
                    self.selected_errors.append(float(err / (state.truth.abs().max() + 1e-12)))
                state.cached = stream.residual.clone()
                return out
            # record: capture the first block's output of this (full) call
            captured = {}
            handle = self.adapter.layers[0].register_forward_hook(
                lambda m, a, out: captured.setdefault("h", (out[0] if isinstance(out, tuple) else out).clone())
            )
            try:
                out = super()._call(stream, x, t, embeds)
            finally:
                handle.remove()
            self.policy.record(state, captured["h"][0], stream.residual)
            return out

        def _forward(self, execution, x, t, embeds):
            self.adapter.activate(execution)
            try:
                self.pipe.transformer(
                    hidden_states=x, encoder_hidden_states=embeds, return_dict=False, **self.adapter.call_kwargs(t)
                )
            finally:
                self.adapter.activate(None)

    return OracleRunner


class _Peek:
    """A StackExecution that runs the whole chunk and records its residual."""

    def __init__(self, stream) -> None:
        self.kv, self.start, self.end, self.rope = stream.kv, stream.start, stream.end, stream.rope
        self.residual: torch.Tensor | None = None

    def plan(self, hidden, temb):
        self._hidden = hidden
        return None

    def finish(self, hidden_out):
        self.residual = (hidden_out - self._hidden)[0]
        return hidden_out


def run_oracle(pipe, request, config: OracleConfig, context: Context = "stale"):
    """One generation under an oracle; returns (GenerationResult, runner, policy)."""
    from motioncache_vllm.config import CacheConfig
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    gen = StepwiseGeneration(pipe, request, cache=CacheConfig())
    # the generation has set the schedule: dt_k = |sigma_k - sigma_(k+1)| of the flow update x += dt v
    sigmas = pipe.scheduler.sigmas.double()
    policy = OraclePolicy(config, (sigmas[:-1] - sigmas[1:]).abs().tolist(), float(gen.run.guidance_scale))
    runner = _runner_class()(pipe, policy, gen.pool, context)
    # dt: both CFG branches execute the leader's decision, weighed on the guided error
    runner.cfg_shared = config.criterion == "dt"
    # the generation's run drives our runner and policy from here on (same adapter, pool)
    gen.run.runner, gen.run.policy, gen.runner = runner, policy, runner
    states: list[OracleState] = []
    original_new_state = policy.new_state

    def tracked(layout):
        s = original_new_state(layout)
        states.append(s)
        return s

    policy.new_state = tracked  # keep every (chunk, branch) state for its records
    try:
        while not gen.done:
            gen.step()
    finally:
        gen.close()
    return gen.result(), runner, states


@dataclass
class OracleSettings:
    prompts: list[str]
    frames: int = 17
    steps: int | None = 20
    seed: int = 0
    step_thresholds: tuple[float, ...] = (0.15, 0.3, 0.6)
    block_thresholds: tuple[float, ...] = (0.2, 0.4, 0.8)
    # the output-error oracles (criterion "dt"; absolute thresholds: ideal ~1.8-4x on the
    # shipped models at 17 frames, 20 steps), run with stale context only (the runtime's)
    dt_thresholds: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    dt_warmup_steps: int = 3
    policies: dict = field(default_factory=lambda: dict(POLICY_THRESHOLDS))


# the step/token caches the oracles are compared with, and their thresholds (None: the policy's default)
POLICY_THRESHOLDS: dict[str, tuple[float | None, ...]] = {
    "teacache": (0.1, 0.3),
    "magcache": (0.06, 0.24),
    "tokenrate": (0.2, 0.4),
}


def oracle_point(prompt: str, variant: str, threshold, result, reference) -> dict:
    """One point of the study: a run's work (ideal speedup, step kinds) and its PSNR against
    the full-compute ``reference`` (capped at 99 dB: identical videos)."""
    from motioncache_vllm.metrics import psnr_db

    return {
        "prompt": prompt,
        "variant": variant,
        "threshold": threshold,
        "ideal_speedup": result.stats["ideal_speedup"],
        "psnr_db": min(round(psnr_db(result.frames, reference.frames), 3), 99.0),
        "full": result.stats["full_steps"],
        "partial": result.stats["partial_steps"],
        "skipped": result.stats["skipped_steps"],
    }


def run_oracle_study(pipe, s: OracleSettings, progress=lambda: None) -> dict:
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.runtime.generate import generate_video

    points, proxy_rows = [], []
    selected_errors: dict[str, list[float]] = {"stale": [], "fresh": []}
    for i, prompt in enumerate(s.prompts):
        req = GenerationRequest(prompt=prompt, num_frames=s.frames, num_inference_steps=s.steps, seed=s.seed + i)
        ref, _, states = run_oracle(pipe, req, OracleConfig(mode="record"))
        progress()
        for st in states:
            for row in st.records:
                proxy_rows.append({"prompt": prompt, **row})

        def add(variant, threshold, res):
            points.append(oracle_point(prompt, variant, threshold, res, ref))

        for tau in s.step_thresholds:
            res, _, _ = run_oracle(pipe, req, OracleConfig(mode="step", threshold=tau))
            add("oracle:step", tau, res)
            progress()
        for context in ("stale", "fresh"):
            for tau in s.block_thresholds:
                res, runner, _ = run_oracle(pipe, req, OracleConfig(mode="block", threshold=tau), context)
                add(f"oracle:block/{context}", tau, res)
                selected_errors[context] += runner.selected_errors
                progress()
        for mode, variant in (("step", "oracle:step-dt"), ("block", "oracle:block-dt/stale")):
            for tau in s.dt_thresholds:
                config = OracleConfig(mode=mode, threshold=tau, criterion="dt", warmup_steps=s.dt_warmup_steps)
                res, _, _ = run_oracle(pipe, req, config)
                add(variant, tau, res)
                progress()
        for policy, thresholds in s.policies.items():
            for tau in thresholds:
                overrides = {} if tau is None else {"threshold": tau}
                res = generate_video(pipe, req, cache=CacheConfig.decode(policy, overrides))
                add(policy, tau, res)
                progress()
    return {
        "suite": "oracle",
        "points": points,
        "proxies": summarise_proxies(proxy_rows),
        "proxy_rows": proxy_rows,
        "fresh_context_max_rel_error": max(selected_errors["fresh"], default=None),
        "stale_context_median_rel_error": statistics.median(selected_errors["stale"])
        if selected_errors["stale"]
        else None,
        "settings": {"prompts": s.prompts, "frames": s.frames, "steps": s.steps, "seed": s.seed},
    }


def summarise_proxies(proxy_rows: list[dict]) -> dict:
    """Per proxy: Spearman with the true per-token change, median and quartiles over steps."""
    summary: dict = {}
    for name in PROXIES:
        values = [r[name] for r in proxy_rows]
        summary[name] = {
            "spearman_median": round(statistics.median(values), 3) if values else None,
            "spearman_q25": round(float(np.quantile(values, 0.25)), 3) if values else None,
            "spearman_q75": round(float(np.quantile(values, 0.75)), 3) if values else None,
        }
    summary["top30_share_median"] = round(statistics.median(r["top30_share"] for r in proxy_rows), 3)
    return summary


def merge_results(results: list[dict]) -> dict:
    """One study from several runs (e.g. one prompt per invocation, to keep each short):
    points and proxy rows pooled, proxies re-summarised; the stale-context error is the
    median of the runs' medians."""
    rows = [r for res in results for r in res["proxy_rows"]]
    fresh = [r["fresh_context_max_rel_error"] for r in results if r["fresh_context_max_rel_error"] is not None]
    stale = [r["stale_context_median_rel_error"] for r in results if r["stale_context_median_rel_error"] is not None]
    return {
        "suite": "oracle",
        "points": [p for res in results for p in res["points"]],
        "proxies": summarise_proxies(rows),
        "proxy_rows": rows,
        "fresh_context_max_rel_error": max(fresh, default=None),
        "stale_context_median_rel_error": statistics.median(stale) if stale else None,
        "settings": [res["settings"] for res in results],
    }


def plot_oracle(result: dict, path) -> None:
    """PSNR against work (ideal speedup), one line per oracle/policy, averaged over prompts."""
    from motioncache_vllm.bench.common import label_axes, pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for variant, pts in summarise(result).items():
        ax.plot(
            [p["ideal_speedup"] for p in pts],
            [p["psnr_db"] for p in pts],
            "o-" if "oracle" in variant else "s--",
            label=variant,
        )
    label_axes(
        ax,
        "ideal speedup over chunked full compute (token passes)",
        "PSNR vs full compute (dB)",
        "oracle: whole-step vs per-block recompute at equal work",
    )
    save_figure(fig, path)


def summarise(result: dict) -> dict[str, list[dict]]:
    """Per variant and threshold: ideal speedup and PSNR averaged over prompts, sorted by work."""
    groups: dict[tuple, list[dict]] = {}
    for p in result["points"]:
        extra = ",".join(f"{k}={v}" for k, v in sorted(p.get("settings", {}).items()))
        groups.setdefault((p["variant"], f"{p['threshold']}" + (f" ({extra})" if extra else "")), []).append(p)
    out: dict[str, list[dict]] = {}
    for (variant, threshold), pts in groups.items():
        out.setdefault(variant, []).append(
            {
                "threshold": threshold,
                "ideal_speedup": round(statistics.mean(p["ideal_speedup"] for p in pts), 4),
                "psnr_db": round(statistics.mean(p["psnr_db"] for p in pts), 3),
                "partial": sum(p["partial"] for p in pts),
                "skipped": sum(p["skipped"] for p in pts),
            }
        )
    return {k: sorted(v, key=lambda p: p["ideal_speedup"]) for k, v in out.items()}


def oracle_table(result: dict) -> str:
    rows = ["| variant | threshold | ideal | PSNR dB | partial steps | skipped steps |", "|---|---|---|---|---|---|"]
    for variant, pts in summarise(result).items():
        rows += [
            f"| {variant} | {p['threshold']} | {p['ideal_speedup']:.3f} | {p['psnr_db']:.2f} | {p['partial']} | "
            f"{p['skipped']} |"
            for p in pts
        ]
    rows += [
        "",
        "| signal (known before the step) | Spearman with the true per-token change: median | q25 | q75 |",
        "|---|---|---|---|",
    ]
    for name in PROXIES:
        v = result["proxies"][name]
        rows.append(f"| {name} | {v['spearman_median']} | {v['spearman_q25']} | {v['spearman_q75']} |")
    rows.append(
        f"\nshare of the change carried by the top 30% of tokens (median over steps): "
        f"{result['proxies']['top30_share_median']}; fresh-context partial vs full step on the selected "
        f"tokens, max relative error: {result['fresh_context_max_rel_error']} (stale context: median "
        f"{result['stale_context_median_rel_error']})"
    )
    return "\n".join(rows)


def run_oracle_suite(pipe, settings, quick: bool, out_dir, progress_bar=None) -> dict:
    """``motioncache bench oracle``: the study on the bench's prompts (``--quick``: one
    prompt, 9 frames, one threshold per variant). ``settings.policies`` (``--policies``)
    picks the caches compared (their thresholds from :data:`POLICY_THRESHOLDS`, else the
    policy's default)."""
    from motioncache_vllm.bench.common import machine_info

    s = OracleSettings(
        prompts=list(settings.prompts[:1] if quick else settings.prompts[:2]),
        frames=9 if quick else settings.frames,
        steps=settings.steps or 20,
        seed=settings.seed,
    )
    if settings.policies:
        s.policies = {name: POLICY_THRESHOLDS.get(name, (None,)) for name in settings.policies}
    if quick:
        s.step_thresholds, s.block_thresholds, s.dt_thresholds = (0.3,), (0.4,), (0.1,)
        s.policies = (
            {name: thresholds[-1:] for name, thresholds in s.policies.items()}
            if settings.policies
            else {"teacache": (0.3,)}
        )
    if progress_bar is not None:
        per_prompt = (
            1
            + len(s.step_thresholds)
            + 2 * len(s.block_thresholds)
            + 2 * len(s.dt_thresholds)
            + sum(map(len, s.policies.values()))
        )
        progress_bar.reset(total=per_prompt * len(s.prompts))
    result = run_oracle_study(pipe, s, progress=progress_bar.update if progress_bar is not None else (lambda: None))
    result["machine"] = machine_info()
    plot_oracle(result, out_dir / "oracle.png")
    return result
