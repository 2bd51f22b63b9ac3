"""``steperror`` against the best step cache and the output-error oracles, per clip and
over clips, on issue 11's two criteria.

``python benchmarks/probes/steperror_verdict.py OUT.json [--base oracle_verdict.json] PIECE.json ...``

Pieces (``oracle_piece.py`` / ``steperror_eval.py`` outputs) of one clip (model, caption,
seed) are pooled, with the clip's points in ``--base`` (``oracle_verdict.py``'s JSON, which
keeps every point of session 7's 18 clips) if given. Fronts and interpolation are
``oracle_verdict.py``'s (upper front over all settings; a front starting at most 0.25x above
a level counts with its first point). Per clip:

- **equal work**: at ideal speedup W (1.5, 2, 2.5, 3) the PSNR of ``steperror``, the step
  oracle, the block oracle (stale K/V) and the best of teacache / magcache / flowcache;
- **equal PSNR**: at the PSNR the best step cache reaches at W, ``steperror``'s ideal
  speedup there divided by W (the issue's "x faster at equal PSNR"); where ``steperror``
  is above that PSNR even at its fastest point, its fastest speedup / W (a lower bound,
  marked ``>=``); where it is below it even at its slowest, none.

Each clip is tagged with the set (``--sets NAME=PROMPTS,...``: the prompts file its caption
comes from) so tuning and held-out sets are summarised apart.

Where the pieces record it (``oracle_piece.py``'s ``map_spearman``), each level also gives the
recompute map's Spearman with the reference's per-block pixel motion, of the policy point
nearest W in work, and the summary its median over the clips of a moving object on a static
scene (``... moves ...``: not pans, bounces or cuts), the issue's map criterion.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

LEVELS = (1.5, 2.0, 2.5, 3.0)
POLICY = "steperror"

_spec = importlib.util.spec_from_file_location("oracle_verdict", Path(__file__).with_name("oracle_verdict.py"))
ov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ov)


def speed_at(front: list[tuple[float, float]], psnr: float) -> tuple[float | None, bool]:
    """The most work-saving ideal speedup at which the front still reaches ``psnr``
    (linear between points); (fastest, True) if every point is above it; (None, False) if
    none reaches it."""
    if not front or front[0][1] < psnr:
        return None, False
    if front[-1][1] >= psnr:
        return front[-1][0], True
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if y0 >= psnr >= y1:
            return (x0 if y0 == y1 else x0 + (x1 - x0) * (y0 - psnr) / (y0 - y1)), False
    return None, False


def moving_object(prompt: str) -> bool:
    """A moving object on a static scene (the map criterion's clips): not a pan, bounce or cut."""
    return " moves " in f" {prompt} " and " cut to " not in prompt and "pans" not in prompt and "bounce" not in prompt


def nearest_map(points: list[dict], w: float) -> float | None:
    """The recorded map Spearman of the policy point nearest ideal speedup ``w`` (None: not recorded)."""
    mapped = [p for p in points if p.get("map_spearman") is not None]
    if not mapped:
        return None
    return min(mapped, key=lambda p: abs(p["ideal_speedup"] - w))["map_spearman"]


def clip_row(points: list[dict], key: tuple, sets: dict[str, set[str]]) -> dict:
    model, prompt, seed = key
    mine = ov.curve(points, POLICY)
    row = {
        "model": model,
        "prompt": prompt,
        "seed": seed,
        "set": next((name for name, caps in sets.items() if prompt in caps), "-"),
        "policy_points": [p for p in points if p["variant"] == POLICY],
        "policy_front": mine,
        "moving_object": moving_object(prompt),
        "levels": {},
    }
    for w in LEVELS:
        cache, who = ov.best_cache(points, w)
        value = ov.at(mine, w)
        step, block = ov.at(ov.curve(points, ov.STEP), w), ov.at(ov.curve(points, ov.BLOCK), w)
        speed, bound = (None, False) if cache is None else speed_at(mine, cache)
        row["levels"][str(w)] = {
            "policy": value,
            "best_cache": cache,
            "best_cache_is": who,
            "step_oracle": step,
            "block_oracle": block,
            "policy_minus_cache": None if value is None or cache is None else round(value - cache, 2),
            "policy_minus_step_oracle": None if value is None or step is None else round(value - step, 2),
            "speed_ratio_at_cache_psnr": None if speed is None else round(speed / w, 3),
            "speed_ratio_is_lower_bound": bound,
            "map_spearman": nearest_map(row["policy_points"], w),
        }
    return row


def summarise(rows: list[dict]) -> dict:
    out = {}
    for w in LEVELS:
        out[str(w)] = {}
        for k in ("policy_minus_cache", "policy_minus_step_oracle", "speed_ratio_at_cache_psnr"):
            out[str(w)][k] = ov.spread(rows, w, k, 3)
        out[str(w)]["clips_ge_1.5dB"] = sum(
            1 for r in rows if (r["levels"][str(w)]["policy_minus_cache"] or -99) >= 1.5
        )
        out[str(w)]["clips_ge_1.3x"] = sum(
            1 for r in rows if (r["levels"][str(w)]["speed_ratio_at_cache_psnr"] or 0) >= 1.3
        )
        maps = [r["levels"][str(w)]["map_spearman"] for r in rows if r["moving_object"]]
        maps = [m for m in maps if m is not None]
        out[str(w)]["map_spearman_moving_object"] = (
            {"median": round(statistics.median(maps), 3), "min": min(maps), "max": max(maps), "n": len(maps)}
            if maps
            else None
        )
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Per work level and set: each clip (dots) and the median (line) of steperror - best step
    cache (dB, left) and of the speed ratio at the cache's PSNR (right)."""
    from motioncache_vllm.bench.common import label_axes, pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sets = sorted({r["set"] for r in rows})
    for ax, key, target, ylabel in (
        (axes[0], "policy_minus_cache", 1.5, "steperror - best step cache (dB)"),
        (axes[1], "speed_ratio_at_cache_psnr", 1.3, "speed ratio at the cache's PSNR"),
    ):
        for j, name in enumerate(sets):
            colour = f"C{j}"
            for model, marker in (("embedded", "o"), ("embedded-textured", "s")):
                pts = [
                    (w + 0.03 * (j - 0.5), r["levels"][str(w)][key])
                    for r in rows
                    if r["set"] == name and r["model"] == model
                    for w in LEVELS
                    if r["levels"][str(w)][key] is not None
                ]
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker, color=colour, alpha=0.35, ms=4)
            med = []
            for w in LEVELS:
                vals = [
                    r["levels"][str(w)][key] for r in rows if r["set"] == name and r["levels"][str(w)][key] is not None
                ]
                if vals:
                    med.append((w, statistics.median(vals)))
            ax.plot([w for w, _ in med], [m for _, m in med], "-", color=colour, lw=2, label=f"{name} median")
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.legend(fontsize=8)
        label_axes(ax, "ideal speedup (equal work)", ylabel, "o: embedded, s: embedded-textured")
    save_figure(fig, path)


def fmt(v, spec="+.1f"):
    return "-" if v is None else format(v, spec)


def main(out: str, *args: str) -> None:
    args = list(args)
    base, sets = None, {}
    if "--base" in args:
        j = args.index("--base")
        base = args[j + 1]
        del args[j : j + 2]
    if "--sets" in args:
        j = args.index("--sets")
        for item in args[j + 1].split(","):
            name, path = item.split("=")
            sets[name] = {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}
        del args[j : j + 2]
    clips: dict[tuple, list[dict]] = {}
    if base:
        for c in json.loads(Path(base).read_text())["clips"]:
            clips.setdefault((c["model"], c["prompt"], c["seed"]), []).extend(c["points"])
    mine: set[tuple] = set()
    for path in args:
        res = json.loads(Path(path).read_text())
        s = res["settings"]
        key = (s["model"], s["prompts"][0], s["seed"])
        clips.setdefault(key, []).extend(res["points"])
        if any(p["variant"] == POLICY for p in res["points"]):
            mine.add(key)
    rows = [clip_row(clips[k], k, sets) for k in sorted(mine)]
    groups: dict[str, list[dict]] = {"all": rows}
    for r in rows:
        groups.setdefault(r["set"], []).append(r)
        groups.setdefault(f"{r['set']} / {r['model']}", []).append(r)
    summary = {name: summarise(rs) for name, rs in groups.items()}
    Path(out).write_text(json.dumps({"clips": rows, "summary": summary, "sources": args}, indent=2) + "\n")
    plot(rows, Path(out).with_suffix(".png"))
    print(
        "| set | model | caption | seed | "
        + " | ".join(f"{w:g}x: steperror / step oracle / cache (dB)" for w in (2.0, 3.0))
        + " | steperror - cache at 1.5 / 2 / 2.5 / 3x | speed at cache PSNR 1.5 / 2 / 2.5 / 3x |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lv = r["levels"]
        cells = [
            f"{fmt(lv[str(w)]['policy'], '.1f')} / {fmt(lv[str(w)]['step_oracle'], '.1f')} / "
            f"{fmt(lv[str(w)]['best_cache'], '.1f')}"
            for w in (2.0, 3.0)
        ]
        diffs = " / ".join(fmt(lv[str(w)]["policy_minus_cache"]) for w in LEVELS)
        speeds = " / ".join(
            ">=" * lv[str(w)]["speed_ratio_is_lower_bound"] + fmt(lv[str(w)]["speed_ratio_at_cache_psnr"], ".2f")
            for w in LEVELS
        )
        print(
            f"| {r['set']} | {r['model']} | {r['prompt']} | {r['seed']} | "
            + " | ".join(cells)
            + f" | {diffs} | {speeds} |"
        )
    for name, summ in summary.items():
        print(f"\n{name} ({len(groups[name])} clips):")
        for w, d in summ.items():
            print(
                f"  {w}x: "
                + "; ".join(
                    f"{k} {v['median']} [{v['min']}, {v['max']}] n={v['n']}" if isinstance(v, dict) else f"{k} {v}"
                    for k, v in d.items()
                )
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
