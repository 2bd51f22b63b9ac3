"""Benchmark suites: ``pareto``, ``overhead``, ``memory``, ... and ``throughput`` (through vLLM,
see :mod:`.throughput`).

Every speedup is a wall-clock ratio measured in the same process on the same inputs,
with the baseline (the stock diffusers loop, "vanilla") and the candidates run
interleaved (round robin) and repeated; medians are reported. Quality is measured
against the vanilla output of the same seed (PSNR over the whole video's MSE, SSIM
averaged over frames). LPIPS is not reported: its backbone weights are downloaded at
run time, which these machines cannot do.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgspec
import torch

from motioncache_vllm.bench.common import (
    BenchSettings,
    bench_requests,
    finite,
    label_axes,
    machine_info,
    pyplot,
    rows_table,
    save_figure,
)
from motioncache_vllm.bench.oracle import oracle_table, run_oracle_suite
from motioncache_vllm.bench.throughput import DEFAULTS as THROUGHPUT_DEFAULTS
from motioncache_vllm.bench.throughput import run_throughput
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db, ssim
from motioncache_vllm.policies.calibration import magnitude_ratios
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.runtime.request import GenerationResult


@dataclass(frozen=True)
class Candidate:
    policy: str  # a cache policy, "vanilla", or a diffusers cache ("diffusers:fbc", ...)
    knob: str
    value: float | None
    run: Callable[[GenerationRequest], GenerationResult]


class Point(msgspec.Struct, omit_defaults=True):
    policy: str
    knob: str
    value: float | None
    speedup: float
    psnr_db: float
    ssim: float
    wall_s: float
    ideal_speedup: float | None = None
    realised_over_ideal: float | None = None
    cache_speedup: float | None = None  # against chunked full compute
    extra: dict = msgspec.field(default_factory=dict)


def measure(pipe, candidates: list[Candidate], s: BenchSettings, progress) -> list[Point]:
    """Run vanilla + candidates round robin, ``repeats`` times per prompt; medians per prompt."""
    vanilla = Candidate("vanilla", "-", None, lambda r: generate_video(pipe, r, runtime="vanilla"))
    chunked = Candidate("none", "-", None, lambda r: generate_video(pipe, r))
    everyone = [vanilla, chunked, *[c for c in candidates if c.policy != "none"]]
    walls = {id(c): [] for c in everyone}  # per prompt: median wall
    quality = {id(c): [] for c in everyone}
    ideal = {id(c): [] for c in everyone}
    for req in bench_requests(s):
        per_rep = {id(c): [] for c in everyone}
        outputs: dict[int, GenerationResult] = {}
        for _ in range(s.repeats):
            for c in everyone:
                res = c.run(req)
                per_rep[id(c)].append(res.wall_s)
                outputs.setdefault(id(c), res)
                progress()
        ref = outputs[id(vanilla)].frames
        for c in everyone:
            walls[id(c)].append(statistics.median(per_rep[id(c)]))
            out = outputs[id(c)]
            quality[id(c)].append((psnr_db(out.frames, ref), ssim(out.frames, ref)))
            ideal[id(c)].append(out.stats.get("ideal_speedup"))
    base, chunk = sum(walls[id(vanilla)]), sum(walls[id(chunked)])
    points = []
    for c in everyone:
        total = sum(walls[id(c)])
        ideal_values = [v for v in ideal[id(c)] if v is not None]
        ideal_mean = statistics.mean(ideal_values) if ideal_values else None
        cache_speedup = (
            chunk / total if c.policy != "vanilla" and ":" not in c.policy else None
        )  # not on the stock loop
        points.append(
            Point(
                policy=c.policy,
                knob=c.knob,
                value=c.value,
                speedup=round(base / total, 4),
                psnr_db=finite(statistics.mean(q[0] for q in quality[id(c)])),
                ssim=round(statistics.mean(q[1] for q in quality[id(c)]), 5),
                wall_s=round(total / len(walls[id(c)]), 4),
                ideal_speedup=None if ideal_mean is None else round(ideal_mean, 4),
                realised_over_ideal=None
                if ideal_mean is None or cache_speedup is None
                else round(cache_speedup / ideal_mean, 4),
                cache_speedup=None if cache_speedup is None else round(cache_speedup, 4),
            )
        )
    return points


def _cache_candidate(pipe, policy: str, knob: str, value, **cache) -> Candidate:
    config = CacheConfig.decode(policy=policy, policy_config={knob: value} if knob != "-" else {}, **cache)
    return Candidate(policy, knob, value, lambda r: generate_video(pipe, r, cache=config))


def _diffusers_candidate(pipe, name: str, knob: str, value, make_config) -> Candidate:
    def run(req: GenerationRequest) -> GenerationResult:
        pipe.transformer.enable_cache(make_config(value))
        try:
            return generate_video(pipe, req, runtime="vanilla")
        finally:
            pipe.transformer.disable_cache()

    return Candidate(f"diffusers:{name}", knob, value, run)


def pareto_candidates(pipe, s: BenchSettings, quick: bool) -> list[Candidate]:
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    thresholds = [0.2, 0.5] if quick else [0.1, 0.2, 0.3, 0.5, 0.8]
    out = [_cache_candidate(pipe, "none", "-", None)]
    for policy in ("teacache", "flowcache", "motion"):
        out += [_cache_candidate(pipe, policy, "threshold", t) for t in thresholds]
    # MagCache's rule on the chunked runtime (whole steps, calibrated ratios)
    out += [_cache_candidate(pipe, "magcache", "threshold", t) for t in ([0.24] if quick else [0.03, 0.06, 0.12, 0.24])]
    out += [
        _diffusers_candidate(pipe, "first_block_cache", "threshold", t, lambda v: FirstBlockCacheConfig(threshold=v))
        for t in ([0.2] if quick else [0.05, 0.1, 0.2, 0.4])
    ]
    out += [
        _diffusers_candidate(
            pipe,
            "taylorseer",
            "cache_interval",
            k,
            lambda v: TaylorSeerCacheConfig(
                cache_interval=int(v),
                taylor_factors_dtype=torch.float32,
                # its default patterns ("^blocks.*attn", fullmatch) miss "blocks.0.attn1", so
                # it never engaged on SkyReels-V2: name the blocks' attention and FFN modules
                cache_identifiers=TAYLORSEER_SKYREELS_MODULES,
            ),
        )
        for k in ([3] if quick else [2, 3, 5])
    ]
    # PAB: self-attention outputs reused for k - 1 of every k calls while the active chunk's
    # timestep is inside (100, 800) (its default range)
    out += [
        _diffusers_candidate(
            pipe,
            "pab",
            "spatial_skip_range",
            k,
            lambda v: PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=int(v),
                current_timestep_callback=lambda: _active_timestep(pipe),
            ),
        )
        for k in ([2] if quick else [2, 3, 5])
    ]
    calls, ratios = magcache_ratios(pipe, s)
    out += [
        _diffusers_candidate(
            pipe,
            "magcache",
            "threshold",
            t,
            lambda v: MagCacheConfig(threshold=v, num_inference_steps=calls, mag_ratios=ratios),
        )
        for t in ([0.12] if quick else [0.06, 0.12, 0.24, 0.5])
    ]
    out += dbcache_candidates(pipe, quick)
    return out


TAYLORSEER_SKYREELS_MODULES = [r"blocks\.\d+\.attn1", r"blocks\.\d+\.attn2", r"blocks\.\d+\.ffn"]


def _active_timestep(pipe) -> int:
    """The timestep of the chunk being denoised: the stock loop's current row holds 0 for
    finished frames and the active chunk's t for the rest of its window."""
    t = pipe.current_timestep
    if t is None:
        return 0
    active = t[t > 0] if torch.is_tensor(t) else torch.tensor([t])
    return int(active.min()) if len(active) else 0


CALIBRATION_CAPTION = "a red circle moves right"  # a training-style caption, not a held-out prompt


def magcache_ratios(pipe, s: BenchSettings) -> tuple[int, list[float]]:
    """MagCache's magnitude ratios for this model and schedule: per transformer call of the
    conditional branch, mean over tokens of |residual_i| / |residual_{i-1}| of the block
    stack (diffusers' calibrate formula), from one full-compute run of the stock loop on a
    caption outside the held-out set. Returns (calls per branch, ratios)."""
    blocks = pipe.transformer.blocks
    norms: list[torch.Tensor] = []
    inputs: list[torch.Tensor] = []
    pre = blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    post = blocks[-1].register_forward_hook(
        lambda m, args, output: norms.append(torch.linalg.norm((output - inputs[-1]).float(), dim=-1))
    )
    try:
        req = GenerationRequest(
            prompt=CALIBRATION_CAPTION,
            num_frames=s.frames,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            seed=s.seed,
        )
        generate_video(pipe, req, runtime="vanilla")
    finally:
        pre.remove()
        post.remove()
    cond = norms[0::2] if len(norms) % 2 == 0 else norms  # the loop calls cond then uncond
    return len(cond), magnitude_ratios(cond)


def dbcache_candidates(pipe, quick: bool) -> list[Candidate]:
    """cache-dit's DBCache (F1B0: first block always computed, none at the back) on the
    stock loop; absent when cache-dit is not installed (``pip install cache-dit``)."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # it logs every enable/disable at info
    try:
        import cache_dit
        from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern
    except ImportError:
        return []

    def make(threshold: float) -> Candidate:
        def run(req: GenerationRequest) -> GenerationResult:
            # cache-dit's own SkyReelsV2 adapter settings; it matches pipelines by class name,
            # and ours is a subclass under another name
            adapter = BlockAdapter(
                pipe=pipe,
                transformer=pipe.transformer,
                blocks=pipe.transformer.blocks,
                forward_pattern=ForwardPattern.Pattern_3,
                check_forward_pattern=True,
                has_separate_cfg=True,
            )
            cache_dit.enable_cache(
                adapter,
                cache_config=DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold),
            )
            try:
                return generate_video(pipe, req, runtime="vanilla")
            finally:
                cache_dit.disable_cache(adapter)

        return Candidate("cache-dit:dbcache", "threshold", threshold, run)

    return [make(t) for t in ([0.2] if quick else [0.05, 0.1, 0.2, 0.4])]


def _points_result(suite: str, points: list[Point], s: BenchSettings, quick: bool, out_dir: Path) -> dict:
    """The result of a speed/quality suite; plots it to ``out_dir/SUITE.png``."""
    result = {
        "suite": suite,
        "points": [msgspec.to_builtins(p) for p in points],
        "settings": {"prompts": s.prompts, "frames": s.frames, "steps": s.steps, "repeats": s.repeats, "quick": quick},
        "machine": machine_info(),
    }
    (_plot_memory if suite == "memory" else _plot)(result, out_dir / f"{suite}.png")
    return result


def _plot_memory(result: dict, path: Path) -> None:
    """Speedup per pool budget, one line per slot format and eviction order (PSNR labelled)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    points = result["points"]
    unbounded = [p for p in points if p["knob"] == "pool:unbounded"]
    budgets = list(
        dict.fromkeys(p["knob"] for p in points if p["knob"].startswith("pool:") and p["knob"] != "pool:unbounded")
    )
    for name in dict.fromkeys(p["policy"] for p in points if p["knob"].startswith("pool:") and p not in unbounded):
        pts = {p["knob"]: p for p in points if p["policy"] == name}
        xs = [i for i, b in enumerate(budgets) if b in pts]
        ax.plot(xs, [pts[budgets[i]]["speedup"] for i in xs], "o-", label=name)
        for i in xs:
            ax.annotate(f"{pts[budgets[i]]['psnr_db']:.1f} dB", (i, pts[budgets[i]]["speedup"]), fontsize=5)
    for p in unbounded:
        ax.axhline(p["speedup"], color="k", ls="--", lw=0.8, label=f"unbounded ({p['psnr_db']:.1f} dB)")
    for p in points:
        if p["policy"] == "none":
            ax.axhline(p["speedup"], color="grey", ls=":", lw=0.8, label="chunked full compute")
    ax.set_xticks(range(len(budgets)), [b.removeprefix("pool:") for b in budgets])
    label_axes(
        ax,
        "pool budget (share of the unbounded float32 peak)",
        "speedup vs vanilla pipeline",
        f"memory ({result['machine']['date']})",
        legend_size=6,
    )
    save_figure(fig, path)


def granularity_candidates(pipe, s: BenchSettings, quick: bool) -> list[Candidate]:
    """The motion policy at spatial block sides of 1, 2 (and 4) tokens."""
    return [
        Candidate(f"motion/tile{t}", "threshold", 0.5, _cache_candidate(pipe, "motion", "threshold", 0.5, tile=t).run)
        for t in ((1, 2) if quick else (1, 2, 4))
    ]


def memory_candidates(pipe, s: BenchSettings, quick: bool) -> list[Candidate]:
    """Motion policy at shrinking pool budgets, motion-aware vs LRU eviction."""
    req = bench_requests(s)[0]
    probe = generate_video(pipe, req, cache=CacheConfig.decode(policy="motion", policy_config={"threshold": 0.5}))
    peak = max(probe.stats["pool_peak_bytes"], 1)
    # the unbounded peak holds one chunk per CFG branch: "one chunk" (of one branch) is the 50% row
    budgets = {"unbounded": None, "50%=one_chunk": peak * 0.5, "25%": peak * 0.25, "10%": peak * 0.1}
    if quick:
        budgets = {k: budgets[k] for k in ("unbounded", "25%")}
    # slot formats: float32 (exact), float16 (half the bytes, measured lossless), and both
    # CFG branches per slot with the uncond one as an int4 difference from an int8 cond
    # residual (cfg_shared; 19% of float32's bytes)
    formats = {
        "float32": {},
        "float16": {"pool_dtype": "float16"},
        "int8+int4cfg": {"pool_dtype": "int8", "cfg_delta_dtype": "int4", "cfg_shared": True},
    }
    out = []
    for label, budget in budgets.items():
        for eviction in ("motion", "lru") if budget is not None else ("motion",):
            for fmt, storage in formats.items() if budget is not None else [("float32", {})]:
                mib = None if budget is None else budget / 2**20
                c = _cache_candidate(pipe, "motion", "threshold", 0.5, pool_mib=mib, eviction=eviction, **storage)
                name = f"motion/{eviction}" + ("" if fmt == "float32" else f"/{fmt}")
                out.append(Candidate(name, f"pool:{label}", None if budget is None else round(budget), c.run))
    return out


def run_cfg(pipe, s: BenchSettings, quick: bool, out_dir: Path, progress_bar=None) -> dict:
    """CFG: per-branch cache state vs the uncond branch executing the cond branch's
    decisions (``cfg_shared``), with guidance on (the model's scale) and off (1.0)."""
    from dataclasses import replace

    thresholds = [0.3] if quick else [0.3, 0.5]
    points = []
    for guidance in (None, 1.0):
        candidates = []
        for t in thresholds:
            for shared in (False, True) if guidance is None else (False,):  # one branch: nothing to share
                c = _cache_candidate(pipe, "motion", "threshold", t, cfg_shared=shared)
                candidates.append(Candidate("motion/shared" if shared else "motion/per_branch", "threshold", t, c.run))
        settings = replace(s, guidance=guidance)
        if progress_bar is not None:
            progress_bar.reset(total=len(s.prompts) * s.repeats * (len(candidates) + 2))
        update = progress_bar.update if progress_bar is not None else (lambda: None)
        g = guidance if guidance is not None else float(pipe.config.default_guidance_scale)
        for p in measure(pipe, candidates, settings, progress=update):  # vanilla/none of the same guidance included
            p.extra["guidance"] = g
            p.policy = f"{p.policy} g={g:g}"
            points.append(p)
    return _points_result("cfg", points, s, quick, out_dir)


def run_overhead(pipe, s: BenchSettings, quick: bool, out_dir: Path) -> dict:
    """Realised vs ideal speedup, and where a cached step's time goes."""
    rows = []
    for threshold in [0.5] if quick else [0.3, 0.5, 0.8]:
        config = CacheConfig.decode(policy="motion", policy_config={"threshold": threshold})
        for req in bench_requests(s)[: 1 if quick else 3]:
            full = generate_video(pipe, req)
            res = generate_video(pipe, req, cache=config)
            t = res.stats["timings"]
            steps = res.stats["full_steps"] + res.stats["partial_steps"] + res.stats["skipped_steps"]
            full_step_s = full.stats["timings"]["step_s"] / max(full.stats["full_steps"], 1)
            realised = full.wall_s / res.wall_s
            rows.append(
                {
                    "threshold": threshold,
                    "prompt": req.prompt,
                    "ideal_speedup": res.stats["ideal_speedup"],
                    "realised_speedup": round(realised, 4),
                    "realised_over_ideal": round(realised / res.stats["ideal_speedup"], 4),
                    # per step, as a share of one full step of the same model
                    "policy_share": round(t["policy_s"] / steps / full_step_s, 5),
                    "pool_share": round(t["pool_s"] / steps / full_step_s, 5),
                    "scatter_share": round(t["scatter_s"] / steps / full_step_s, 5),
                    # a whole skipped call (embeddings + head + the above) against a full call
                    "skipped_call_share": round(t["skip_call_s"] / max(res.stats["skipped_steps"], 1) / full_step_s, 5),
                }
            )
    result = {"suite": "overhead", "rows": rows, "machine": machine_info()}
    _plot_overhead(result, out_dir / "overhead.png")
    return result


def _plot_overhead(result: dict, path: Path) -> None:
    plt = pyplot()
    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['threshold']} {r['prompt'][:14]}" for r in rows]
    x = range(len(rows))
    bottom = [0.0] * len(rows)
    for key in ("policy_share", "pool_share", "scatter_share"):
        values = [100 * r[key] for r in rows]
        left.bar(x, values, bottom=bottom, label=key.removesuffix("_share"))
        bottom = [b + v for b, v in zip(bottom, values)]
    left.plot(x, [100 * r["skipped_call_share"] for r in rows], "k_", markersize=14, label="whole skipped call")
    left.set_ylabel("% of one full step, per step")
    left.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=6)
    left.legend(fontsize=7)
    right.plot(x, [r["realised_over_ideal"] for r in rows], "o")
    right.axhline(0.85, color="grey", ls="--", lw=0.8)
    right.set_ylabel("realised / ideal speedup")
    right.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=6)
    fig.suptitle("overhead (motion policy; threshold, prompt)")
    save_figure(fig, path)


def chunk_pixel_ranges(num_frames: int, latent_per_chunk: int, temporal: int = 4) -> list[tuple[int, int]]:
    """Pixel frames of each chunk: latent frame 0 is pixel 0, latent k >= 1 is pixels 4k-3..4k."""
    ranges, latent = [], (num_frames - 1) // temporal + 1
    for start in range(0, latent, latent_per_chunk):
        end = min(start + latent_per_chunk, latent) - 1
        lo = 0 if start == 0 else temporal * start - (temporal - 1)
        ranges.append((lo, min(temporal * end, num_frames - 1) + 1))
    return ranges


def run_per_chunk(pipe, suite: str, s: BenchSettings, quick: bool, out_dir: Path) -> dict:
    """Per-chunk PSNR against full compute of the same seed.

    ``cuts``: held-out prompts with hard cuts and fast motion; reference = the stock loop.
    ``long``: one minute-scale video (>= 60 chunks); reference = chunked full compute,
    because the stock loop would recompute a window of all frames every step (hours on
    2 cores); chunked full compute equals it (tests/test_runtime.py).
    """
    from motioncache_vllm.data.procedural import HELD_OUT_TRIPLES

    policies = {"motion": 0.5, "flowcache": 0.5, "teacache": 0.5}
    if suite == "cuts":
        (c0, s0, d0), (c1, s1, d1) = HELD_OUT_TRIPLES[:2]
        prompts = [f"a {c0} {s0} moves {d0} then cut to a {c1} {s1} moves {d1}", f"a {c1} {s1} moves {d1} quickly"]
        frames, reference = s.frames, "vanilla"
    else:
        prompts = s.prompts[:1]
        chunks = 8 if quick else 60
        frames = 4 * (chunks * pipe.causal_block_size - 1) + 1
        reference = "chunked"
    curves = []
    for i, prompt in enumerate(prompts[:1] if quick else prompts):
        req = GenerationRequest(prompt=prompt, num_frames=frames, num_inference_steps=s.steps, seed=s.seed + i)
        ref = generate_video(pipe, req, runtime="vanilla" if reference == "vanilla" else "chunked")
        ranges = chunk_pixel_ranges(frames, pipe.causal_block_size)
        for policy, threshold in policies.items():
            out = generate_video(
                pipe, req, cache=CacheConfig.decode(policy=policy, policy_config={"threshold": threshold})
            )
            per_chunk = [finite(psnr_db(out.frames[a:b], ref.frames[a:b])) for a, b in ranges]
            curves.append(
                {
                    "prompt": prompt,
                    "policy": policy,
                    "threshold": threshold,
                    "frames": frames,
                    "reference": reference,
                    "psnr_db_per_chunk": per_chunk,
                    "psnr_db": finite(psnr_db(out.frames, ref.frames)),
                    "ideal_speedup": out.stats["ideal_speedup"],
                    "wall_s": round(out.wall_s, 3),
                    "reference_wall_s": round(ref.wall_s, 3),
                }
            )
    result = {
        "suite": suite,
        "curves": curves,
        "machine": machine_info(),
        "settings": {"frames": frames, "steps": s.steps, "quick": quick},
    }
    _plot_curves(result, out_dir / f"{suite}.png")
    return result


def _plot_curves(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in result["curves"]:
        ax.plot(c["psnr_db_per_chunk"], ".-", label=f"{c['policy']} - {c['prompt'][:28]}")
    label_axes(
        ax,
        "chunk",
        f"PSNR vs {result['curves'][0]['reference'] if result['curves'] else ''} (dB)",
        f"{result['suite']}: per-chunk PSNR ({result['settings']['frames']} frames)",
        legend_size=6,
    )
    save_figure(fig, path)


def _plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    by_policy: dict[str, list] = {}
    for p in result["points"]:
        by_policy.setdefault(p["policy"], []).append(p)
    for name, pts in by_policy.items():
        pts = sorted(pts, key=lambda p: p["speedup"])
        ax.plot([p["speedup"] for p in pts], [p["psnr_db"] for p in pts], "o-", label=name)
    label_axes(
        ax,
        "speedup vs vanilla pipeline (wall clock)",
        "PSNR vs vanilla output (dB)",
        f"{result['suite']} ({result['machine']['date']})",
    )
    save_figure(fig, path)


def to_table(result: dict) -> str:
    if result.get("suite") == "oracle":
        return oracle_table(result)
    if "curves" in result:
        head = "| prompt | policy | frames | PSNR dB | worst chunk dB | last chunk dB | ideal |\n|---|---|---|---|---|---|---|"
        rows = [
            f"| {c['prompt']} | {c['policy']} | {c['frames']} | {c['psnr_db']:.2f} | "
            f"{min(c['psnr_db_per_chunk']):.2f} | {c['psnr_db_per_chunk'][-1]:.2f} | {c['ideal_speedup']} |"
            for c in result["curves"]
        ]
        return "\n".join([head, *rows])
    if "points" in result:
        head = "| policy | knob | value | speedup | PSNR dB | SSIM | ideal | realised/ideal |\n|---|---|---|---|---|---|---|---|"
        rows = [
            f"| {p['policy']} | {p['knob']} | {p.get('value')} | {p['speedup']:.2f}x | {p['psnr_db']:.2f} | "
            f"{p['ssim']:.4f} | {p.get('ideal_speedup') or '-'} | {p.get('realised_over_ideal') or '-'} |"
            for p in result["points"]
        ]
    else:
        tables = [rows_table(result["rows"])]
        if "overhead" in result:  # throughput: one request alone, vLLM vs the library path
            tables.append(rows_table(result["overhead"]))
        if result.get("target", {}).get("ratio"):
            t = result["target"]
            ratios = ", ".join(f"{k} {v:.2f}" for k, v in t["ratio"].items())
            tables.append(f"at {t['concurrency']} concurrent / sequential rate: {ratios} (target >= {t['min_ratio']})")
        if result.get("vs_baseline", {}).get("ratio"):
            b = result["vs_baseline"]
            ratios = ", ".join(f"{k} {v:.2f}" for k, v in b["ratio"].items())
            tables.append(
                f"at {b['concurrency']} concurrent, videos/min over the baseline engine's: {ratios} (target >= {b['min_ratio']})"
            )
        return "\n\n".join(tables)
    return "\n".join([head, *rows])


# -- the suite registry ----------------------------------------------------------------


def _standard_defaults(quick: bool) -> dict:
    return {"frames": 17 if quick else 33, "steps": 10 if quick else None, "repeats": 1 if quick else 3}


@dataclass(frozen=True)
class Suite:
    """A benchmark: ``run(pipe, name, settings, quick, out_dir, progress_bar) -> result``,
    and its ``--frames/--steps/--repeats`` defaults by ``quick``."""

    run: Callable[..., dict]
    defaults: Callable[[bool], dict] = _standard_defaults


def _candidate_suite(make_candidates: Callable[[object, BenchSettings, bool], list[Candidate]]) -> Suite:
    """A speed/quality suite: its candidates measured against vanilla and chunked full compute."""

    def run(pipe, name: str, settings: BenchSettings, quick: bool, out_dir: Path, progress_bar=None) -> dict:
        candidates = make_candidates(pipe, settings, quick)
        total = len(settings.prompts) * settings.repeats * (len([c for c in candidates if c.policy != "none"]) + 2)
        if progress_bar is not None:
            progress_bar.reset(total=total)
        update = progress_bar.update if progress_bar is not None else (lambda: None)
        return _points_result(name, measure(pipe, candidates, settings, progress=update), settings, quick, out_dir)

    return Suite(run)


SUITES: dict[str, Suite] = {
    "pareto": _candidate_suite(pareto_candidates),
    "overhead": Suite(lambda pipe, name, s, quick, out, bar=None: run_overhead(pipe, s, quick, out)),
    "memory": _candidate_suite(memory_candidates),
    "granularity": _candidate_suite(granularity_candidates),
    "cuts": Suite(lambda pipe, name, s, quick, out, bar=None: run_per_chunk(pipe, name, s, quick, out)),
    "long": Suite(lambda pipe, name, s, quick, out, bar=None: run_per_chunk(pipe, name, s, quick, out)),
    "throughput": Suite(
        lambda pipe, name, s, quick, out, bar=None: run_throughput(
            pipe, s, quick, out, bar, **({"policies": s.policies} if s.policies else {})
        ),
        lambda quick: dict(THROUGHPUT_DEFAULTS[quick]),
    ),
    "cfg": Suite(lambda pipe, name, s, quick, out, bar=None: run_cfg(pipe, s, quick, out, bar)),
    "oracle": Suite(lambda pipe, name, s, quick, out, bar=None: run_oracle_suite(pipe, s, quick, out, bar)),
}
"""Every benchmark by name (``motioncache bench --suite NAME``)."""


def default_settings(suite: str, quick: bool) -> dict:
    """Defaults of ``--frames``, ``--steps`` and ``--repeats`` for ``suite``."""
    return SUITES[suite].defaults(quick)


def run_suite(pipe, suite: str, settings: BenchSettings, quick: bool, out_dir: Path, progress_bar=None) -> dict:
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    return SUITES[suite].run(pipe, suite, settings, quick, out_dir, progress_bar)
