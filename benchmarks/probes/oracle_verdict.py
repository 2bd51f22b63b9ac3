"""The headroom table of issue 11 from per-clip oracle runs (``oracle_piece.py`` outputs).

``python benchmarks/probes/oracle_verdict.py OUT.json CLIP1.json CLIP2.json ...``

Per clip (caption, seed, model) and work level W (ideal speedup 2, 3, 4), each variant's
PSNR at W, linearly interpolated along its points sorted by work (no extrapolation: a
variant whose points do not span W has no value there); the best step cache is the better
of ``teacache`` and ``magcache`` at W. Differences: block oracle (stale K/V, output-error
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

LEVELS = (2.0, 3.0, 4.0)
CACHES = ("teacache", "magcache", "flowcache")
BLOCK, STEP = "oracle:block-dt/stale", "oracle:step-dt"


def curve(points: list[dict], variant: str) -> list[tuple[float, float]]:
    return sorted((p["ideal_speedup"], p["psnr_db"]) for p in points if p["variant"] == variant)


def at(c: list[tuple[float, float]], w: float) -> float | None:
    """PSNR at work ``w`` on the piecewise-linear curve ``c`` (None outside its span)."""
    for (x0, y0), (x1, y1) in zip(c, c[1:]):
        if x0 <= w <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (w - x0) / (x1 - x0)
    if c and abs(c[-1][0] - w) < 1e-9:
        return c[-1][1]
    return None


def best_cache(points: list[dict], w: float) -> tuple[float | None, str | None]:
    best, who = None, None
    for name in CACHES:
        v = at(curve(points, name), w)
        if v is not None and (best is None or v > best):
            best, who = v, name
    return best, who


def monotone(c: list[tuple[float, float]]) -> bool:
    return all(y1 <= y0 + 0.05 for (_, y0), (_, y1) in zip(c, c[1:]))


def clip_rows(result: dict) -> dict:
    pts, s = result["points"], result["settings"]
    row = {
        "model": s["model"],
        "prompt": s["prompts"][0],
        "seed": s["seed"],
        "step_oracle_monotone": monotone(curve(pts, STEP)),
        "block_oracle_monotone": monotone(curve(pts, BLOCK)),
        "levels": {},
    }
    for w in LEVELS:
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


def medians(rows: list[dict]) -> dict:
    out = {}
    for w in LEVELS:
        out[str(w)] = {}
        for key in ("block_minus_cache", "block_minus_step_oracle", "step_oracle_minus_cache"):
            vals = [r["levels"][str(w)][key] for r in rows if r["levels"][str(w)][key] is not None]
            out[str(w)][key] = {
                "median": round(statistics.median(vals), 2) if vals else None,
                "min": min(vals, default=None),
                "max": max(vals, default=None),
                "n": len(vals),
            }
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


def main(out: str, *inputs: str) -> None:
    rows = [clip_rows(json.loads(Path(p).read_text())) for p in inputs]
    models = sorted({r["model"] for r in rows})
    summary = {"all": medians(rows), **{m: medians([r for r in rows if r["model"] == m]) for m in models}}
    Path(out).write_text(json.dumps({"clips": rows, "medians": summary, "sources": list(inputs)}, indent=2) + "\n")
    print(table(rows))
    for name, med in summary.items():
        print(f"\n{name}:")
        for w, d in med.items():
            print(f"  {w}x: " + "; ".join(f"{k} {v['median']} [{v['min']}, {v['max']}] n={v['n']}" for k, v in d.items()))
    print(
        "\nmonotone in work: step oracle "
        f"{sum(r['step_oracle_monotone'] for r in rows)}/{len(rows)}, block oracle "
        f"{sum(r['block_oracle_monotone'] for r in rows)}/{len(rows)}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
