"""``steperror`` against the TeaCache + MagCache front at equal wall clock, from one or more
``hybrid_pareto.py`` outputs (e.g. a caption set run in two halves, or a second run adding
candidates: each candidate is pooled over the runs that hold it, and every candidate must cover
the same captions).

    python benchmarks/probes/steperror_wall.py PARETO.json [PARETO.json ...]

Per candidate over all captions: wall speedup = sum of the stock loop's walls / sum of the
candidate's, mean PSNR, mean ideal speedup, realised / ideal (over chunked full compute).
Per ``steperror`` row: its PSNR minus the cache front's (upper front of the teacache and
magcache rows, ``oracle_verdict.py``'s interpolation) at equal wall speedup and at equal
ideal work, and the speed ratio at equal PSNR (``>=`` / ``<=``: bounds where the policy's PSNR is
above / below the whole front). Timing figures only from an exclusive run.
"""

import importlib.util
import json
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("oracle_verdict", Path(__file__).with_name("oracle_verdict.py"))
ov = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ov)
CACHES = ("teacache", "magcache")


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


def main(paths: list[str]) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
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
        row.update(
            speedup=sum(stock for _, stock in per) / sum(r["wall_s"] for r, _ in per),
            psnr_db=sum(r["psnr_db"] for r, _ in per) / len(per),
            ideal=None if None in ideal else sum(ideal) / len(ideal),
            captions=frozenset(r["prompt"] for r, _ in per),
        )
        rows.append(row)
    if len({r["captions"] for r in rows}) != 1:  # a candidate in several runs counts each run's walls
        sys.exit("every candidate must cover the same captions")

    def chunked(row: dict) -> float:
        """Chunked full compute's speedup with the row's pool settings (else the first one)."""
        nones = [r for r in rows if r["policy"] == "none"]
        return next((r for r in nones if r["pool"] == row["pool"]), nones[0])["speedup"]

    def front(key: str) -> list[tuple[float, float]]:
        pts = [{"variant": r["policy"], "ideal_speedup": r[key], "psnr_db": r["psnr_db"]} for r in rows]
        return ov.curve([p for p in pts if p["variant"] in CACHES], CACHES)

    by_wall, by_work = front("speedup"), front("ideal")
    print(
        "| policy | config | wall speedup | ideal | PSNR dB (mean) | realised / ideal | - cache front, equal wall | equal ideal work | speed at equal PSNR |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows[1:]:  # rows[0]: the stock loop
        cfg = ", ".join(f"{k} {v}" for k, v in row["cfg"].items()) or "-"
        cells = ["", "", ""]
        if row["policy"] == "steperror":
            wall, work = ov.at(by_wall, row["speedup"]), ov.at(by_work, row["ideal"])
            speed, bound = cache_speed_at(by_wall, row["psnr_db"])
            cells = [
                "-" if wall is None else f"{row['psnr_db'] - wall:+.1f} dB",
                "-" if work is None else f"{row['psnr_db'] - work:+.1f} dB",
                "-" if speed is None else f"{bound}{row['speedup'] / speed:.2f}x",
            ]
        print(
            f"| {row['policy']} | {cfg} | {row['speedup']:.2f}x | {row['ideal'] or 1:.3f} | {row['psnr_db']:.2f} | "
            f"{row['speedup'] / chunked(row) / (row['ideal'] or 1):.2f} | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
