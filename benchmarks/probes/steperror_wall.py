"""``steperror`` against the TeaCache + MagCache + FlowCache front at equal wall clock, from one or more
``hybrid_pareto.py`` outputs (e.g. a caption set run in two halves, or a second run adding
candidates: each candidate is pooled over the runs that hold it, and every candidate must cover
the same captions).

    python benchmarks/probes/steperror_wall.py [--plot OUT.png] [--range LO HI] PARETO.json [PARETO.json ...]

Per candidate over all captions: wall speedup = sum of the stock loop's walls / sum of the
candidate's; the same over chunked full compute (what the cache itself adds: issue 11's "3-6x"
was written when chunked full compute was 2.36x, i.e. 1.27-2.54x of it); mean PSNR, mean ideal
speedup, realised / ideal. Per ``steperror`` row: its recompute map (median Spearman over captions
with "moves"), its PSNR minus the cache front's (upper front of the teacache, magcache and
flowcache rows present, ``oracle_verdict.py``'s interpolation) at equal wall speedup, minus the
best single cache's, minus the upper hull's, at equal ideal work, and the speed ratio at equal
PSNR (``>=`` / ``<=``: bounds where the policy's PSNR is above / below the whole front).
``--range LO HI``: per ``steperror`` setting (its config without the threshold), the smallest
margin over the best single cache and the smallest map among its points whose speedup over
chunked full compute lies in [LO, HI]. ``--plot``: PSNR against wall speedup, the cache points
and their front, one ``steperror`` line per setting (config without the threshold). Timing
figures only from an exclusive run. ``--common``: pool runs whose candidate lists differ (e.g.
held-out sets run with different variants) over the candidates every caption has; the others are
named on stderr and left out.
"""

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("oracle_verdict", Path(__file__).with_name("oracle_verdict.py"))
ov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ov)
CACHES = ("teacache", "magcache", "flowcache")  # the "best of teacache, flowcache and magcache"


def cache_speed_at(front: list[tuple[float, float]], psnr: float) -> tuple[float | None, str]:
    """The cache front's wall speedup at ``psnr`` (linear between points), and how the ratio
    against it reads: "" exact; ">=" the front is below ``psnr`` everywhere (its slowest point,
    which reaches less, gives a lower bound); "<=" above it everywhere (its fastest point)."""
    if not front:
        return None, ""
    if front[0][1] < psnr:
        return front[0][0], ">="
    if front[-1][1] >= psnr:
        return front[-1][0], "<="
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if y0 >= psnr >= y1:
            return (x0 if y0 == y1 else x0 + (x1 - x0) * (y0 - psnr) / (y0 - y1)), ""
    return None, ""


def upper_hull(front: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The concave upper hull of ``front`` (sorted by speed): the best PSNR any mix of the cache
    settings reaches at each speed. The plain front joins neighbouring points, so a point just
    faster than a much better one (MagCache 0.01 at 3.80x, 46.8 dB, beside TeaCache 0.05 at 3.78x,
    54.8 dB) drops the line steeply and flatters every policy point past it; the hull does not.
    Give it lossy points only: with a full-compute point (~97 dB, float noise) the hull is one
    line from it to the fastest point."""
    hull: list[tuple[float, float]] = []
    for p in front:
        # drop the last point while it lies on or below the line from the one before it to p
        while len(hull) >= 2 and (hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1]) >= (hull[-1][1] - hull[-2][1]) * (
            p[0] - hull[-2][0]
        ):
            hull.pop()
        hull.append(p)
    return hull


def setting_of(row: dict) -> str:
    """A steperror row's setting: its config and pool settings as the run named them, without
    the threshold (one ``--range`` row and one plot line each)."""
    return ", ".join(f"{k} {v}" for k, v in row["cfg"].items() if k != "threshold")


def plot(out: str, rows: list[dict], front: list[tuple[float, float]], hull: list[tuple[float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(*zip(*front), "-", color="grey", alpha=0.6, label="cache front")
    ax.plot(*zip(*hull), ":", color="black", alpha=0.6, label="its upper hull (lossy settings)")
    groups = {
        "teacache": ("o", "tab:blue", lambda r: r["policy"] == "teacache"),
        "magcache": ("o", "tab:orange", lambda r: r["policy"] == "magcache"),
        "flowcache": ("o", "tab:purple", lambda r: r["policy"] == "flowcache"),
        "chunked full compute": ("*", "black", lambda r: r["policy"] == "none"),
    }
    # one line per steperror setting as the run named it (a setting left out is the policy's
    # default when the run was made: refresh_fraction 0.1 in sessions 13-15, 0 before and after)
    lines = ("s-", "^--", "v-.", "D:", "P-", "X--")
    colours = ("tab:red", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    named = sorted({setting_of(r) for r in rows if r["policy"] == "steperror"})
    for n, setting in enumerate(named):
        groups[f"steperror {setting or '(defaults)'}"] = (
            lines[n % len(lines)],
            colours[n % len(colours)],
            lambda r, setting=setting: r["policy"] == "steperror" and setting_of(r) == setting,
        )
    for label, (style, colour, member) in groups.items():
        pts = sorted((r["speedup"], r["psnr_db"]) for r in rows if member(r))
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=label, markersize=5)
    ax.set_xlabel("wall-clock speedup over the stock loop")
    ax.set_ylabel("PSNR dB vs the stock loop (mean over captions)")
    ax.set_ylim(top=min(75.0, max(r["psnr_db"] for r in rows) + 3))  # full compute's ~97 dB squeezes the rest
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def range_verdict(points: dict[str, list[tuple[float, float, float | None]]], lo: float, hi: float) -> None:
    """Per steperror setting: its margins over the best single cache (points and, where it has
    points on both sides of a range end, the margin interpolated there) within [lo, hi]."""
    print(
        f"\n| setting (without threshold) | points in {lo:.2f}-{hi:.2f}x over full compute | smallest margin over the best single cache | smallest map |"
    )
    print("|---|---|---|---|")
    for setting, pts in points.items():
        pts = sorted(pts)
        inside = [(x, m, mp) for x, m, mp in pts if lo <= x <= hi]
        margin_curve = [(x, m) for x, m, _ in pts]
        # the margin at a range end, interpolated between the setting's neighbouring points
        ends = [ov.at(margin_curve, end) for end in (lo, hi) if pts[0][0] < end < pts[-1][0]]
        margins = [m for _, m, _ in inside] + [m for m in ends if m is not None]
        maps = [mp for _, _, mp in inside if mp is not None]
        points_cell = f"{len(inside)} ({inside[0][0]:.2f}-{inside[-1][0]:.2f}x)" if inside else "0"
        margin_cell = f"{min(margins):+.1f} dB" if margins else "-"
        map_cell = f"{min(maps):.2f}" if maps else "-"
        print(f"| {setting or '-'} | {points_cell} | {margin_cell} | {map_cell} |")


def main(
    paths: list[str], plot_path: str | None = None, band: tuple[float, float] | None = None, common: bool = False
) -> None:
    runs = []
    for path in paths:
        try:
            run = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            sys.exit(f"{path}: not JSON ({error})")
        if not isinstance(run, dict) or not {"sets", "candidates"} <= run.keys():
            sys.exit(f"{path}: not a hybrid_pareto.py output (no 'sets' and 'candidates')")
        runs.append(run)
    # candidates pooled by (policy, config, pool settings) over the runs: runs may add
    # candidates (e.g. lower thresholds), each timed against its own run's stock loop
    pooled: dict[str, dict] = {}
    for run in runs:
        for s in run["sets"].values():
            stock_walls = [r["wall_s"] for r in s["rows"]["0"]]
            for i, (policy, cfg, *pool) in enumerate(run["candidates"]):  # pool: hybrid_pareto's third element
                pool_settings = pool[0] if pool else {}
                key = json.dumps([policy, cfg or {}, pool_settings], sort_keys=True)
                row = pooled.setdefault(
                    key,
                    {"policy": policy, "cfg": {**(cfg or {}), **pool_settings}, "pool": pool_settings, "per": []},
                )
                row["per"] += [(r, stock) for r, stock in zip(s["rows"][str(i)], stock_walls)]
    rows = []
    for row in pooled.values():
        per = row.pop("per")
        ideal = [r["ideal_speedup"] for r, _ in per]
        # issue 11's map criterion: clips of a moving object on a static scene
        maps = [r["map_spearman"] for r, _ in per if "moves" in r["prompt"] and r.get("map_spearman") is not None]
        row.update(
            speedup=sum(stock for _, stock in per) / sum(r["wall_s"] for r, _ in per),
            psnr_db=sum(r["psnr_db"] for r, _ in per) / len(per),
            ideal=None if None in ideal else sum(ideal) / len(ideal),
            captions=frozenset(r["prompt"] for r, _ in per),
            map=statistics.median(maps) if maps else None,
        )
        rows.append(row)
    if common:  # only what every caption ran (the stock loop and chunked full compute always are)
        everywhere = frozenset.union(*(r["captions"] for r in rows))
        for r in rows:
            if r["captions"] != everywhere:
                print(f"left out (not run on every caption): {r['policy']} {r['cfg']}", file=sys.stderr)
        rows = [r for r in rows if r["captions"] == everywhere]
    if len({r["captions"] for r in rows}) != 1:  # a candidate in several runs counts each run's walls
        sys.exit("every candidate must cover the same captions")

    def chunked(row: dict) -> float:
        """Chunked full compute's speedup with the row's pool settings (else the first one)."""
        nones = [r for r in rows if r["policy"] == "none"]
        return next((r for r in nones if r["pool"] == row["pool"]), nones[0])["speedup"]

    def front(key: str, caches: tuple[str, ...] = CACHES, lossy_only: bool = False) -> list[tuple[float, float]]:
        """Upper front of the caches' rows; ``lossy_only``: of the settings that skipped some work."""
        pts = [
            {"variant": r["policy"], "ideal_speedup": r[key], "psnr_db": r["psnr_db"]}
            for r in rows
            if r["policy"] in caches and not (lossy_only and (r["ideal"] or 1.0) <= 1.0)
        ]
        return ov.curve(pts, caches)

    def best_family_at(speed: float) -> float | None:
        """The best single cache's PSNR at ``speed``, each interpolated along its own threshold
        sweep (the merged front also joins a TeaCache point to a MagCache one)."""
        values = [ov.at(front("speedup", (name,)), speed) for name in CACHES]
        return max((v for v in values if v is not None), default=None)

    by_wall, by_work = front("speedup"), front("ideal")
    hull = upper_hull(front("speedup", lossy_only=True))
    if plot_path:
        plot(plot_path, rows[1:], by_wall, hull)
    print(
        "| policy | config | wall speedup | over chunked full compute | ideal | PSNR dB (mean) | realised / ideal | - cache front, equal wall | - best single cache | - upper hull | equal ideal work | speed at equal PSNR (front / hull) | map Spearman, moving objects |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    settings: dict[str, list[tuple[float, float, float | None]]] = {}  # for --range
    for row in rows[1:]:  # rows[0]: the stock loop
        cfg = ", ".join(f"{k} {v}" for k, v in row["cfg"].items()) or "-"
        over_full = row["speedup"] / chunked(row)
        cells = ["", "", "", "", "", ""]
        if row["policy"] == "steperror":
            wall, work = ov.at(by_wall, row["speedup"]), ov.at(by_work, row["ideal"])
            hull_wall, family = ov.at(hull, row["speedup"]), best_family_at(row["speedup"])
            speed, bound = cache_speed_at(by_wall, row["psnr_db"])
            hull_speed, hull_bound = cache_speed_at(hull, row["psnr_db"])
            cells = [
                "-" if wall is None else f"{row['psnr_db'] - wall:+.1f} dB",
                "-" if family is None else f"{row['psnr_db'] - family:+.1f} dB",
                "-" if hull_wall is None else f"{row['psnr_db'] - hull_wall:+.1f} dB",
                "-" if work is None else f"{row['psnr_db'] - work:+.1f} dB",
                ("-" if speed is None else f"{bound}{row['speedup'] / speed:.2f}x")
                + " / "
                + ("-" if hull_speed is None else f"{hull_bound}{row['speedup'] / hull_speed:.2f}x"),
                "-" if row["map"] is None else f"{row['map']:.2f}",
            ]
            if family is not None:
                settings.setdefault(setting_of(row), []).append((over_full, row["psnr_db"] - family, row["map"]))
        print(
            f"| {row['policy']} | {cfg} | {row['speedup']:.2f}x | {over_full:.2f}x | {row['ideal'] or 1:.3f} | {row['psnr_db']:.2f} | "
            f"{over_full / (row['ideal'] or 1):.2f} | " + " | ".join(cells) + " |"
        )

    if band:
        range_verdict(settings, *band)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="hybrid_pareto.py outputs")
    parser.add_argument("--plot", help="write the PSNR / wall speedup plot here")
    parser.add_argument("--common", action="store_true", help="pool over the candidates every caption ran")
    parser.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"), help="speedup over chunked full compute")
    args = parser.parse_args()
    if args.range and args.range[0] > args.range[1]:
        parser.error(f"--range: LO {args.range[0]} is above HI {args.range[1]}")
    missing = [run for run in args.runs if not Path(run).is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    main(args.runs, args.plot, tuple(args.range) if args.range else None, args.common)
