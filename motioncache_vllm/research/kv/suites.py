"""``motioncache research kv SUITE``: the suites, their defaults, their JSON and plots.

- ``video``: one long video (default 40 AR chunks = 477 frames, 4 steps per chunk),
  every policy at 75/50/25/10% of the full context K/V, against the full-K/V video;
- ``scenes``: the static / pan / cut / fast-motion prompts (default 8 chunks, 50/25/10%);
- ``text``: the tiny causal LM on associative recall (see :mod:`.text`): accuracy per
  press and compression ratio.

Every suite writes ``OUT/kv_SUITE.json`` (``{"points": [...]}``) and ``OUT/kv_SUITE.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from motioncache_vllm.research.kv.video import BUDGETS, VIDEO_POLICIES, run_video_suite

SUITES = ("video", "scenes", "text", "crossmodal")


def default_prompts(suite: str) -> list[str]:
    from motioncache_vllm.data.procedural import HELD_OUT_TRIPLES

    (c0, s0, d0), (c1, s1, d1), (c2, s2, d2), (c3, s3, d3) = HELD_OUT_TRIPLES[:4]
    if suite == "video":
        return [f"a {c1} {s1} bounces {d1}"]
    if suite == "crossmodal":  # colour, shape and direction come from the words alone
        return [f"a {c} {s} moves {d}" for c, s, d in HELD_OUT_TRIPLES[:4]]
    return [
        "static scene",
        f"camera pans {d2} over a {c2} {s2}",
        f"a {c3} {s3} moves {d3} then cut to a {c0} {s0} moves {d0}",
        f"a {c0} {s0} moves {d0} quickly",
    ]


@dataclass
class KVSettings:
    prompts: list[str]
    chunks: int
    steps: int
    guidance: float | None = None  # None: the model's default CFG scale
    budgets: tuple[float, ...] = BUDGETS
    policies: tuple[str, ...] = VIDEO_POLICIES
    seed: int = 0
    extra: dict = field(default_factory=dict)


def default_settings(suite: str, quick: bool, prompts: list[str] | None = None) -> KVSettings:
    if suite == "text":
        return KVSettings(prompts=[], chunks=0, steps=0, budgets=(1.0, 0.5, 0.25) if quick else BUDGETS)
    lines = prompts or default_prompts(suite)
    if suite == "crossmodal":
        from motioncache_vllm.research.kv.crossmodal import MODES

        if quick:
            return KVSettings(prompts=lines[:1], chunks=2, steps=1, budgets=(1.0, 0.25), policies=MODES)
        return KVSettings(prompts=lines, chunks=4, steps=3, budgets=(1.0, 0.5, 0.25, 0.1), policies=MODES)
    if quick:
        return KVSettings(prompts=lines[:1], chunks=3, steps=2, budgets=(1.0, 0.5, 0.25))
    if suite == "video":
        return KVSettings(prompts=lines, chunks=40, steps=4)
    return KVSettings(prompts=lines, chunks=8, steps=4, budgets=(1.0, 0.5, 0.25, 0.1))


class ResumeMismatch(ValueError):
    """``--resume`` found an earlier result of other settings."""


def earlier_points(suite: str, out_dir: Path, settings: dict) -> list[dict]:
    """Points of an earlier (possibly interrupted) run in ``out_dir`` with the same settings
    (prompts and budgets may differ: those are what a resumed run adds)."""
    for name in (f"kv_{suite}.partial.json", f"kv_{suite}.json"):
        path = out_dir / name
        if not path.exists():
            continue
        old = json.loads(path.read_text())
        mine = old.get("settings", {})
        for key in ("chunks", "steps", "guidance", "seed", "model"):
            if key in mine and mine[key] != settings[key]:
                raise ResumeMismatch(
                    f"--resume: {path} was run with {key}={mine[key]!r}, this run has {settings[key]!r}; "
                    "use another --out or the same settings"
                )
        return old["points"]
    return []


def run_suite(
    suite: str,
    settings: KVSettings,
    quick: bool,
    out_dir: Path,
    model: str = "embedded",
    log=print,
    resume: bool = False,
) -> dict:
    """Run ``suite``; with ``resume`` (video, scenes, crossmodal), keep the points already in
    ``out_dir`` for the same settings and run only the missing ones; video and scenes cache
    their reference videos in ``out_dir/kv_ref`` (so a long suite can run as several short
    invocations)."""
    from motioncache_vllm.bench.common import machine_info

    t0 = time.perf_counter()
    if suite == "text":
        from motioncache_vllm.research.kv.text import run_text_suite

        result = run_text_suite(quick, kept=None if settings.budgets == BUDGETS else settings.budgets, log=log)
    elif suite in ("video", "scenes", "crossmodal"):
        result = _run_video_like(suite, settings, out_dir, model, log, resume)
    else:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    result = {
        "suite": suite,
        "quick": quick,
        **result,
        "machine": machine_info(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out_dir / f"kv_{suite}.partial.json").unlink(missing_ok=True)
    plot(result, out_dir / f"kv_{suite}.png")
    return result


def _progress_line(p: dict) -> str:
    line = (
        f"{p['prompt'][:32]:32s} {p['policy']:13s} budget {p['budget']:.2f}: PSNR {p['psnr_db']:6.2f} dB, "
        f"SSIM {p['ssim']:.4f}, K/V {p['kv_bytes'] / 2**20:.1f} MiB"
    )
    if "text_rows_kept" in p:  # crossmodal
        line += (
            f", text rows {p['text_rows_kept']:2d} (words {p['words_kept']}/{p['words']}), "
            f"colour {p['colour_ok']}, direction {p['direction_ok']}"
        )
    return f"{line} ({p['wall_s']:.0f} s)"


def _run_video_like(suite: str, settings: KVSettings, out_dir: Path, model: str, log, resume: bool) -> dict:
    """The video, scenes and crossmodal suites: one settings record, one resume and progress path."""
    from motioncache_vllm.models.loading import load_pipeline

    pipe = load_pipeline(model)
    guidance = settings.guidance if settings.guidance is not None else pipe.config.default_guidance_scale
    run_settings = {
        "prompts": settings.prompts,
        "chunks": settings.chunks,
        "steps": settings.steps,
        "guidance": guidance,
        "budgets": list(settings.budgets),
        "seed": settings.seed,
        "model": model,
    }
    earlier = earlier_points(suite, out_dir, run_settings) if resume else []
    done: list[dict] = list(earlier)

    def progress(p: dict) -> None:
        done.append(p)  # a partial result survives an interrupted run
        (out_dir / f"kv_{suite}.partial.json").write_text(
            json.dumps({"points": done, "settings": run_settings}, indent=1)
        )
        log(_progress_line(p))

    args = (pipe, settings.prompts, settings.chunks, settings.steps, settings.guidance, settings.budgets)
    if suite == "crossmodal":
        from motioncache_vllm.research.kv.crossmodal import run_crossmodal_suite

        points = run_crossmodal_suite(*args, settings.policies, settings.seed, progress, done=earlier)
    else:
        points = run_video_suite(
            *args,
            settings.policies,
            settings.seed,
            progress,
            done=earlier,
            cache=out_dir / "kv_ref" if resume else None,
        )
    run_settings["prompts"] = list(dict.fromkeys(p["prompt"] for p in points))
    run_settings["budgets"] = sorted({p["budget"] for p in points}, reverse=True)
    run_settings["policies"] = list(dict.fromkeys(p["policy"] for p in points))
    run_settings["frames"] = points[0]["frames"] if points else None
    return {"points": points, "settings": run_settings}


def mean_points(points: list[dict], key: str) -> dict[tuple[str, float], float]:
    """Mean of ``key`` per (policy, budget) over prompts."""
    acc: dict[tuple[str, float], list[float]] = {}
    for p in points:
        acc.setdefault((p["policy"], p["budget"]), []).append(p[key])
    return {k: sum(v) / len(v) for k, v in acc.items()}


def plot(result: dict, path: Path) -> None:
    from motioncache_vllm.bench.common import label_axes, pyplot, save_figure

    plt = pyplot()
    points = result["points"]
    if result["suite"] == "text":
        variants = list(dict.fromkeys(p["variant"] for p in points))
        fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
        for ax, variant in zip(axes[0], variants):
            mine = [p for p in points if p["variant"] == variant]
            full = [p["accuracy"] for p in mine if p["policy"] == "full"]
            for press in dict.fromkeys(p["policy"] for p in mine if p["policy"] != "full"):
                pts = sorted((p for p in mine if p["policy"] == press), key=lambda p: -p["budget"])
                ax.plot(
                    [1.0] + [p["budget"] for p in pts],
                    full[:1] + [p["accuracy"] for p in pts],
                    "--" if press.startswith("kvpress:") else "-",
                    marker="o",
                    label=press,
                )
            ax.invert_xaxis()
            label_axes(ax, "K/V kept (share of the context)", "recall accuracy", f"text: recall, {variant}", 6)
        save_figure(fig, path)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    psnr = mean_points([p for p in points if p["budget"] < 1.0], "psnr_db")
    for policy in dict.fromkeys(p["policy"] for p in points if p["budget"] < 1.0):
        budgets = sorted({b for (n, b) in psnr if n == policy}, reverse=True)
        left.plot(budgets, [psnr[(policy, b)] for b in budgets], "o-", label=policy)
    left.invert_xaxis()
    label_axes(
        left,
        "context K/V kept (share of full)",
        "PSNR vs full K/V (dB, mean over prompts)",
        f"kv {result['suite']}: quality at a budget",
        7,
    )
    lowest = min((p["budget"] for p in points if p["policy"] != "full"), default=1.0)
    for p in points:
        if p["budget"] == lowest and p["prompt"] == points[0]["prompt"]:
            curve = p["psnr_db_per_chunk"][1:]  # chunk 0 has no context: exact under every policy
            right.plot(range(1, len(curve) + 1), curve, ".-", label=p["policy"])
    label_axes(
        right,
        "chunk",
        "PSNR vs full K/V (dB)",
        f"per chunk at {lowest:.0%}: {points[0]['prompt'][:30] if points else ''}",
        7,
    )
    save_figure(fig, path)


def to_table(result: dict) -> str:
    points = result["points"]
    if result["suite"] == "text":
        variants = list(dict.fromkeys(p["variant"] for p in points))
        kept = sorted({p["budget"] for p in points}, reverse=True)
        acc = {(p["policy"], p["variant"], p["budget"]): p["accuracy"] for p in points}
        head = "| press | " + " | ".join(f"{v} {k:.0%}" for v in variants for k in kept) + " |"
        rows = [head, "|---|" + "---|" * (len(variants) * len(kept))]
        for press in dict.fromkeys(p["policy"] for p in points):
            cells = [
                acc.get((press, v, k), acc.get(("full", v, 1.0)) if k >= 1.0 else None) for v in variants for k in kept
            ]
            rows.append(f"| {press} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
        return "\n".join(rows)
    psnr, ssim_ = mean_points(points, "psnr_db"), mean_points(points, "ssim")
    kv = mean_points(points, "kv_bytes")
    if result["suite"] == "crossmodal":
        rows_, words_ = mean_points(points, "text_rows_kept"), mean_points(points, "words_kept")
        ok = mean_points([p for p in points if p["colour_ok"] is not None], "colour_ok")
        dok = mean_points([p for p in points if p["direction_ok"] is not None], "direction_ok")
        head = (
            "| mode | budget | PSNR dB | SSIM | K/V MiB | text rows kept | word rows kept | colour ok | direction ok |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        rows = [
            f"| {n} | {b:.2f} | {psnr[(n, b)]:.2f} | {ssim_[(n, b)]:.4f} | {kv[(n, b)] / 2**20:.2f} | "
            f"{rows_[(n, b)]:.1f} | {words_[(n, b)]:.1f} | {ok.get((n, b), float('nan')):.2f} | "
            f"{dok.get((n, b), float('nan')):.2f} |"
            for (n, b) in psnr
        ]
        return "\n".join([head, *rows])
    head = "| policy | budget | PSNR dB | SSIM | K/V MiB |\n|---|---|---|---|---|"
    rows = [
        f"| {n} | {b:.2f} | {psnr[(n, b)]:.2f} | {ssim_[(n, b)]:.4f} | {kv[(n, b)] / 2**20:.1f} |" for (n, b) in psnr
    ]
    return "\n".join([head, *rows])
