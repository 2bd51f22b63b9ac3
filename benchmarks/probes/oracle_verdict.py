"""The headroom table of issue 11 from per-clip oracle runs (``oracle_piece.py`` outputs).

``python benchmarks/probes/oracle_verdict.py OUT.json CLIP1.json CLIP2.json ...``

Files of one clip (model, caption, seed) are pooled. Per clip and work level W (ideal
speedup 2, 3, 4): the best PSNR a variant reaches at W over all its settings - the upper
front of its points (none better at more work), linearly interpolated, no extrapolation
(a variant whose front does not span W has no value there); the best step cache is that
front over ``teacache`` and ``magcache`` points together. Differences: block oracle (stale K/V, output-error
criterion) minus the best step cache, and minus the step oracle; medians over clips, per
model and overall. Also: whether each oracle's PSNR falls monotonically with work.
Equal work -> equal wall clock: ``wall = W x realisation`` where realisation is the
measured (wall speedup over chunked full compute) / (ideal speedup) of a policy kind
(RESULTS.md, magrefresh session 6, exclusive lock: partial-step policy vs step caches).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

LEVELS = (2.0, 3.0, 4.0)  # the per-clip table
MEDIAN_LEVELS = (1.5, 2.0, 2.5, 3.0, 4.0)
BELOW = 0.25
CACHES = ("teacache", "magcache", "flowcache")
BLOCK, STEP = "oracle:block-dt/stale", "oracle:step-dt"


def curve(points: list[dict], variants: tuple[str, ...] | str) -> list[tuple[float, float]]:
    """The upper front of the variants' points: (work, PSNR) with no point at more work and
    more PSNR, sorted by work."""
    names = (variants,) if isinstance(variants, str) else variants
    pts = sorted(((p["ideal_speedup"], p["psnr_db"]) for p in points if p["variant"] in names), reverse=True)
    front: list[tuple[float, float]] = []
    for x, y in pts:  # from the most work down: keep a point only if it beats all with more work
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front[::-1]


def families(points: list[dict], variant: str) -> dict[str, list[tuple[float, float]]]:
    """Per setting (other than the threshold): the variant's points sorted by work."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p["variant"] == variant:
            key = json.dumps(p.get("settings", {}), sort_keys=True)
            out.setdefault(key, []).append((p["ideal_speedup"], p["psnr_db"]))
    return {k: sorted(v) for k, v in out.items()}


def at(c: list[tuple[float, float]], w: float) -> float | None:
    """PSNR at work ``w`` on the piecewise-linear front ``c``; just below the front's
    least work (by <= ``BELOW``), its first point (as fast or faster, a lower bound); else
    None outside its span."""
    if c and 0 <= c[0][0] - w <= BELOW:
        return c[0][1]
    for (x0, y0), (x1, y1) in zip(c, c[1:]):
        if x0 <= w <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (w - x0) / (x1 - x0)
    if c and abs(c[-1][0] - w) < 1e-9:
        return c[-1][1]
    return None


def best_cache(points: list[dict], w: float) -> tuple[float | None, str | None]:
    best = at(curve(points, CACHES), w)
    per = {name: at(curve(points, name), w) for name in CACHES}
    who = max((v, k) for k, v in per.items() if v is not None)[1] if any(v is not None for v in per.values()) else None
    return best, who


def monotone(c: list[tuple[float, float]]) -> bool:
    return all(y1 <= y0 + 0.05 for (_, y0), (_, y1) in zip(c, c[1:]))


def clip_rows(pts: list[dict], s: dict) -> dict:
    row = {
        "model": s["model"],
        "prompt": s["prompts"][0],
        "seed": s["seed"],
        # per setting family (e.g. warm-up): does PSNR fall as work falls?
        "step_oracle_monotone": {k: monotone(c) for k, c in families(pts, STEP).items()},
        "block_oracle_monotone": {k: monotone(c) for k, c in families(pts, BLOCK).items()},
        "points": pts,
        "levels": {},
    }
    for w in MEDIAN_LEVELS:
        cache, who = best_cache(pts, w)
        block, step = at(curve(pts, BLOCK), w), at(curve(pts, STEP), w)
        row["levels"][str(w)] = {
            "block_oracle": block,
            "step_oracle": step,
            "best_cache": cache,
            "best_cache_is": who,
            "block_minus_cache": None if block is None or cache is None else round(block - cache, 2),
            "block_minus_step_oracle": None if block is None or step is None else round(block - step, 2),
            "step_oracle_minus_cache": None if step is None or cache is None else round(step - cache, 2),
        }
    return row


def spread(rows: list[dict], w: float, key: str, digits: int = 2) -> dict:
    """Median, min, max and count over the clips that have ``key`` at level ``w``."""
    vals = [r["levels"][str(w)][key] for r in rows if r["levels"][str(w)][key] is not None]
    return {
        "median": round(statistics.median(vals), digits) if vals else None,
        "min": min(vals, default=None),
        "max": max(vals, default=None),
        "n": len(vals),
    }


def medians(rows: list[dict]) -> dict:
    out = {}
    for w in MEDIAN_LEVELS:
        out[str(w)] = {}
        for key in ("block_minus_cache", "block_minus_step_oracle", "step_oracle_minus_cache"):
            out[str(w)][key] = spread(rows, w, key)
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| model | caption | seed | " + " | ".join(f"{w:g}x: block-cache / block-step" for w in LEVELS) + " |",
        "|---|---|---|" + "---|" * len(LEVELS),
    ]
    for r in rows:
        cells = []
        for w in LEVELS:
            lv = r["levels"][str(w)]
            a, b = lv["block_minus_cache"], lv["block_minus_step_oracle"]
            cells.append(f"{'-' if a is None else f'{a:+.1f}'} / {'-' if b is None else f'{b:+.1f}'}")
        lines.append(f"| {r['model']} | {r['prompt']} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    """Per work level: each clip's difference (dots) and the median over clips (line)."""
    from motioncache_vllm.bench.common import label_axes, pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = (
        ("block_minus_cache", "block oracle (stale K/V) - best step cache", "C0"),
        ("step_oracle_minus_cache", "step oracle - best step cache", "C1"),
        ("block_minus_step_oracle", "block oracle - step oracle (spatial)", "C2"),
    )
    for j, (key, label, colour) in enumerate(series):
        for r in rows:
            xs = [w + 0.04 * (j - 1) for w in MEDIAN_LEVELS if r["levels"][str(w)][key] is not None]
            ys = [r["levels"][str(w)][key] for w in MEDIAN_LEVELS if r["levels"][str(w)][key] is not None]
            ax.plot(xs, ys, ".", color=colour, alpha=0.35)
        med = [(w, summary["all"][str(w)][key]["median"]) for w in MEDIAN_LEVELS]
        med = [(w, m) for w, m in med if m is not None]
        ax.plot([w for w, _ in med], [m for _, m in med], "o-", color=colour, label=label + " (median)")
    ax.axhline(1.5, color="grey", ls="--", lw=1)
    ax.axhline(0.0, color="black", lw=0.6)
    label_axes(ax, "ideal speedup (equal work)", "PSNR difference (dB)", "headroom at equal work, per clip and median")
    save_figure(fig, path)


def main(out: str, *inputs: str) -> None:
    clips: dict[tuple, tuple[list, dict]] = {}
    for path in inputs:
        res = json.loads(Path(path).read_text())
        s = res["settings"]
        key = (s["model"], s["prompts"][0], s["seed"])
        clips.setdefault(key, ([], s))[0].extend(res["points"])
    rows = [clip_rows(pts, s) for pts, s in clips.values()]
    models = sorted({r["model"] for r in rows})
    summary = {"all": medians(rows), **{m: medians([r for r in rows if r["model"] == m]) for m in models}}
    Path(out).write_text(json.dumps({"clips": rows, "medians": summary, "sources": list(inputs)}, indent=2) + "\n")
    plot(rows, summary, Path(out).with_suffix(".png"))
    print(table(rows))
    for name, med in summary.items():
        print(f"\n{name}:")
        for w, d in med.items():
            print(
                f"  {w}x: " + "; ".join(f"{k} {v['median']} [{v['min']}, {v['max']}] n={v['n']}" for k, v in d.items())
            )
    for name in ("step_oracle_monotone", "block_oracle_monotone"):
        fams = sorted({k for r in rows for k in r[name]})
        print(
            f"{name}: "
            + "; ".join(
                f"{k}: {sum(r[name][k] for r in rows if k in r[name])}/{sum(k in r[name] for r in rows)}" for k in fams
            )
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
