"""Candidate scene-cut signals on the first-step material of ``cut_signals.py``: which one
separates cut chunks from uncut ones, and by how much.

    python benchmarks/probes/cut_separators.py OUT.json SIG_DIR...

Labels per chunk c >= 1: a plan's scene start whose caption names another subject is a
"cut", unless the reference shows none (``NO_VISIBLE_CUT``, checked by eye on the frames:
the model morphed the object in place or never drew the new one); a scene start naming the
same subject is a "caption change"; chunks of a one-caption "... then cut to ..." video are
reported apart (where the model cuts is its own choice); everything else is "uncut". Caption
changes count with the uncut chunks: the guard must not fire there.

Each candidate is a number per chunk (higher = more of a cut), taken raw ("abs", a fixed
threshold) or over the running median of the video's earlier chunks with a floor ("rel", the
session-7 guard's form, from chunk 2 on). Margin = lowest cut / highest non-cut value on the
tuning videos (> 1: a threshold between them separates). Videos in ``SEEN_ONCE`` (set B,
looked at last session) and ``VALIDATION`` (recorded after the signal was chosen) are
reported apart, with the same two numbers. OUT.png: the frames on both sides of every chunk
boundary of every plan (the labels' evidence).
"""

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

SET_B = "a orange square moves up quickly|camera pans left over a magenta triangle|camera pans up over a orange square"
SEEN_ONCE = {SET_B}
VALIDATION = {
    "a red circle moves right slowly|a green square moves left quickly|camera pans down over a blue triangle|"
    "a yellow circle moves up slowly",
    "a blue triangle moves left slowly|a blue circle moves right slowly|a blue square moves up slowly",
    "static scene|a red circle moves right slowly|static scene",
    "a green square bounces left|a green square moves right quickly|a green square moves down quickly",
}
SET_C = {  # the lead's held-out set C (benchmarks/cut_plans_C.txt), seen in session 8's end
    "a magenta triangle moves left slowly|a white circle moves down quickly|a cyan square moves right quickly",
    "a orange square moves up slowly|camera pans right over a white circle|a magenta triangle moves left quickly",
}
RUNTIME = "pool4x4 1-corr"  # the runtime guard's signal (cut_grid 4), compared with cut_threshold
THRESHOLD = 0.9  # PolicyConfigBase.cut_threshold's default
BAND = 0.7  # PolicyConfigBase.cut_band_threshold's default: (BAND, THRESHOLD] is the guard's band
AFTER = "final latents pool4x4 1-corr"  # the same signal on the finished chunk: what a later step could see
NO_VISIBLE_CUT = {  # (video, chunk): scene starts where the reference shows no cut
    ("a blue triangle moves left slowly|a blue circle moves right slowly|a blue square moves up slowly", 2),
    ("a blue triangle moves left slowly|a blue circle moves right slowly|a blue square moves up slowly", 4),
    ("static scene|a red circle moves right slowly|static scene", 2),
    ("static scene|a red circle moves right slowly|static scene", 4),
}


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else 1.0


def pool(f: np.ndarray, n: int) -> np.ndarray:
    """A (C, H, W) frame averaged onto an n x n grid."""
    c, h, w = f.shape
    return f.reshape(c, n, h // n, n, w // n).mean(axis=(2, 4))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum() / d) if d > 0 else 1.0


def foreground(f: np.ndarray, p: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """(background (C,), foreground signature (C,)) of a latent frame (C, H, W)."""
    bg = np.median(f.reshape(f.shape[0], -1), axis=1)
    dev = f - bg[:, None, None]
    w = np.linalg.norm(dev, axis=0) ** p
    return bg, (dev * w).sum(axis=(1, 2)) / (w.sum() + 1e-12)


def shifted_pairs(a: np.ndarray, b: np.ndarray, k: int):
    """(a, b shifted by (dy, dx)) on their overlap, for every shift up to k latent pixels."""
    h, w = a.shape[-2:]
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            ya, yb = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
            xa, xb = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
            yield a[..., ya, xa], b[..., yb, xb]


def patch_change(x0: np.ndarray, prev: np.ndarray, p: int, k: int, how: str) -> np.ndarray:
    """Per p x p patch of x0: the change against prev, best over shifts up to k (0: none).
    how = 'corr' (1 - local corr) or 'mse' (mean square / the two frames' mean variance)."""
    c, h, w = x0.shape
    scale = 0.5 * (x0.var() + prev.var()) + 1e-12
    out = []
    pad = np.pad(prev, ((0, 0), (k, k), (k, k)), mode="edge")
    for y in range(0, h, p):
        for x in range(0, w, p):
            q = x0[:, y : y + p, x : x + p]
            best = np.inf
            for dy in range(-k, k + 1):
                for dx in range(-k, k + 1):
                    r = pad[:, y + k + dy : y + k + dy + p, x + k + dx : x + k + dx + p]
                    v = 1.0 - corr(q, r) if how == "corr" else float(((q - r) ** 2).mean() / scale)
                    best = min(best, v)
            out.append(best)
    return np.array(out)


def candidates(x0: np.ndarray, prev_chunk: np.ndarray, prev_x0: np.ndarray, xc: np.ndarray, xu: np.ndarray) -> dict:
    """Every candidate at one chunk: x0 (C, F, H, W) = the chunk's first-step estimate, prev
    (C, F, H, W) = the previous chunk's final latents, prev_x0 = the previous chunk's own
    first-step estimate (C, F, H, W), xc / xu = the estimate of the cond / uncond branch alone."""
    f0, prev = x0[:, 0], prev_chunk[:, -1]
    # the caption against the context: the uncond branch continues what the context shows, the
    # cond branch follows the caption; where the caption asks for another scene they part
    cu = {
        "cond vs uncond 1-corr f0": 1.0 - corr(xc[:, 0], xu[:, 0]),
        "cond vs uncond 1-corr chunk": 1.0 - corr(xc, xu),
        "cond vs uncond L2/uncond": float(np.linalg.norm(xc - xu) / (np.linalg.norm(xu - xu.mean()) + 1e-12)),
        "cond-prev minus uncond-prev": (1.0 - corr(xc[:, 0], prev)) - (1.0 - corr(xu[:, 0], prev)),
        "cond-prev over uncond-prev": (1.0 - corr(xc[:, 0], prev)) / max(1.0 - corr(xu[:, 0], prev), 1e-6),
        "uncond-prev 1-corr": 1.0 - corr(xu[:, 0], prev),
    }
    out = {
        **cu,
        "corr (now)": 1.0 - corr(f0, prev),
        "corr vs prev first-step x0": 1.0 - corr(f0, prev_x0[:, -1]),
        "mean abs / std": float(np.abs(f0 - prev).mean() / (prev.std() + 1e-12)),
    }
    # where the content is, not what: channel statistics ignore position (motion, pans)
    m0, m1 = f0.mean(axis=(1, 2)), prev.mean(axis=(1, 2))
    s0, s1 = f0.std(axis=(1, 2)), prev.std(axis=(1, 2))
    out["channel means dist"] = float(np.abs(m0 - m1).sum() / (np.abs(m1).sum() + 1e-12))
    out["channel means+std 1-corr"] = 1.0 - corr(np.concatenate([m0, s0]), np.concatenate([m1, s1]))
    srt0 = np.sort(f0.reshape(f0.shape[0], -1), axis=1)
    srt1 = np.sort(prev.reshape(prev.shape[0], -1), axis=1)
    out["sorted values 1-corr"] = 1.0 - corr(srt0, srt1)
    out["sorted values L1/std"] = float(np.abs(srt0 - srt1).mean() / (prev.std() + 1e-12))
    # what the foreground looks like, wherever it is: the frame's background (per-channel
    # median) and the mean offset from it weighted by how far each position stands out
    (b0, g0), (b1, g1) = foreground(f0), foreground(prev)
    out["fg signature 1-cos"] = 1.0 - cos(g0, g1)
    out["bg dist"] = float(np.linalg.norm(b0 - b1) / (np.linalg.norm(b1) + 1e-12))
    out["bg+fg 1-cos"] = 1.0 - cos(np.concatenate([b0, g0]), np.concatenate([b1, g1]))
    out["fg 1-cos + bg dist"] = out["fg signature 1-cos"] + out["bg dist"]
    out["max(fg 1-cos, bg dist)"] = max(out["fg signature 1-cos"], out["bg dist"])
    # the first step's estimate carries token-sized noise: compare coarser grids
    for n in (2, 4, 8):
        a, b = pool(f0, n), pool(prev, n)
        out[f"pool{n}x{n} 1-corr"] = 1.0 - corr(a, b)
        out[f"pool{n}x{n} L2/std"] = float(np.linalg.norm(a - b) / (np.linalg.norm(b - b.mean()) + 1e-12))
        out[f"pool{n}x{n} shift<=1 1-corr"] = 1.0 - max(corr(x, y) for x, y in shifted_pairs(a, b, 1))
        (b0, g0), (b1, g1) = foreground(a), foreground(b)
        out[f"pool{n}x{n} fg 1-cos"] = 1.0 - cos(g0, g1)
        out[f"pool{n}x{n} bg+fg 1-cos"] = 1.0 - cos(np.concatenate([b0, g0]), np.concatenate([b1, g1]))
    # against the motion the previous chunk itself had (final latents, first to last frame),
    # or the motion inside this chunk's own estimate
    for n in (4, 8):
        a, b = pool(f0, n), pool(prev, n)
        inter = 1.0 - corr(a, b)
        own = 1.0 - corr(pool(prev_chunk[:, 0], n), b)
        intra = 1.0 - corr(a, pool(x0[:, -1], n))
        for floor in (0.02, 0.05, 0.1):
            out[f"pool{n}x{n} / prev-chunk motion (floor {floor})"] = inter / max(own, floor)
            out[f"pool{n}x{n} / own x0 motion (floor {floor})"] = inter / max(intra, floor)
    for k in (1, 2, 4):
        out[f"global shift<={k} 1-corr"] = 1.0 - max(corr(a, b) for a, b in shifted_pairs(f0, prev, k))
    for p in (4, 8):
        for k in (0, 2, 4):
            for how in ("corr", "mse"):
                ch = patch_change(f0, prev, p, k, how)
                for q in (25, 50):
                    out[f"patch{p} shift<={k} {how} q{q}"] = float(np.percentile(ch, q))
    return out


def subject(caption: str) -> str:
    """The colour and shape a caption names ('a cyan square moves ...', '... over a blue triangle')."""
    m = re.search(r"(?:over )?an? (\w+ \w+)(?: moves| bounces|$)", caption)
    return m.group(1) if m else caption


def load(path: Path):
    d = np.load(path)
    meta = json.loads(str(d["meta"]))
    return d, meta


def estimates(d, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk c's first-step clean estimate x0 = x - sigma v: guided, cond alone, uncond alone."""
    x, s, g = d[f"x{c}"][0], float(d["sigmas"][c]), float(d["guidance"])
    vc, vu = d[f"cond{c}"][0], d[f"uncond{c}"][0]
    return x - s * (vu + g * (vc - vu)), x - s * vc, x - s * vu


def chunk_rows(path: Path) -> list[dict]:
    d, meta = load(path)
    lat, ranges = d["latents"], meta["ranges"]
    per = lat.shape[2] // len(ranges)
    rows = []
    for c in range(1, len(ranges)):
        x0, xc, xu = estimates(d, c)
        prev_x0 = estimates(d, c - 1)[0]
        if c in meta["scene_starts"]:
            i = meta["scene_starts"].index(c)
            if subject(meta["prompts"][i]) == subject(meta["prompts"][i + 1]):
                label = "caption change, same subject"
            elif (meta["name"], c) in NO_VISIBLE_CUT:
                label = "caption change, no visible cut"
            else:
                label = "cut"
        elif " cut " in meta["prompts"][0]:
            label = "in-caption cut video"
        else:
            label = "uncut"
        group = (
            "seen once"
            if meta["name"] in SEEN_ONCE
            else "validation"
            if meta["name"] in VALIDATION
            else "set C"
            if meta["name"] in SET_C
            else "tuning"
        )
        values = candidates(x0, lat[0, :, (c - 1) * per : c * per], prev_x0, xc, xu)
        after = 1.0 - corr(pool(lat[0, :, c * per], 4), pool(lat[0, :, c * per - 1], 4))
        rows.append({"video": meta["name"], "chunk": c, "label": label, "group": group, "values": values, AFTER: after})
    return rows


def relative(rows: list[dict], name: str, floor: float) -> list[float | None]:
    """Each chunk's value over the running median of the earlier chunks' (at least floor)."""
    vals = [r["values"][name] for r in rows]
    return [None if i == 0 else vals[i] / max(statistics.median(vals[:i]), floor, 1e-9) for i in range(len(vals))]


def spread(points: list) -> dict | None:
    """Lowest cut and highest non-cut value (with where), margin = their ratio."""
    cut = [p for p in points if p[1] == "cut"]
    other = [p for p in points if p[1] not in ("cut", "in-caption cut video")]
    if not cut or not other:
        return None
    lo, hi = min(cut), max(other)
    return {
        "lowest_cut": round(lo[0], 4),
        "at": f"{lo[2][:40]} #{lo[3]}",
        "highest_noncut": round(hi[0], 4),
        "noncut_at": f"{hi[2][:40]} #{hi[3]}",
        "margin": round(lo[0] / hi[0], 3) if hi[0] > 0 else None,
        "n_cut": len(cut),
        "n_noncut": len(other),
    }


def boundaries_png(paths: list[Path], out: Path) -> None:
    """The labels' evidence: per plan (one row each, in the order of the paths), the pixel frames
    on both sides of every chunk boundary (last of chunk c - 1, first of chunk c), white between."""
    import imageio.v3 as iio

    rows = []
    for path in paths:
        d, meta = load(path)
        if not meta["scene_starts"]:
            continue
        frames = d["frames"]
        tiles = []
        for a, _ in meta["ranges"][1:]:
            gap = np.full((frames.shape[1], 6, 3), 255, np.uint8)
            tiles += [frames[a - 1], frames[a], gap]
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    img = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows])
    iio.imwrite(out, img)


def band_confirmers(videos: list[list[dict]], names: list[str]) -> dict:
    """The guard's band (BAND, THRESHOLD] of the runtime signal: could a second signal confirm a
    cut there? Per candidate (and the after-the-fact final-latents signal): the lowest value at
    any cut of any group against the highest at the non-cuts in the band (> 1: it confirms)."""
    every = [r for v in videos for r in v]
    cuts = [r for r in every if r["label"] == "cut"]
    inside = [
        r
        for r in every
        if r["label"] not in ("cut", "in-caption cut video") and BAND < r["values"][RUNTIME] <= THRESHOLD
    ]
    if not cuts or not inside:
        return {}
    rows = []
    for name in [*names, AFTER]:
        get = (lambda r: r[AFTER]) if name == AFTER else (lambda r, n=name: r["values"][n])
        lo, hi = min(get(r) for r in cuts), max(get(r) for r in inside)
        rows.append({"candidate": name, "cuts_lowest": round(lo, 4), "band_noncuts_highest": round(hi, 4)})
        rows[-1]["margin"] = round(lo / hi, 3) if hi > 0 else None
    rows.sort(key=lambda r: -(r["margin"] or 0))
    return {
        "band": [BAND, THRESHOLD],
        "cuts_in_band": [
            f"{r['video'][:40]} #{r['chunk']} {r['values'][RUNTIME]:.3f}"
            for r in cuts
            if r["values"][RUNTIME] <= THRESHOLD
        ],
        "noncuts_in_band": [f"{r['video'][:40]} #{r['chunk']} {r['values'][RUNTIME]:.3f}" for r in inside],
        "n_cuts": len(cuts),
        "confirmers": rows,
    }


def main() -> None:
    out_path, dirs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    paths = [p for d in dirs for p in sorted(d.glob("*.npz"))]
    videos = [chunk_rows(p) for p in paths]
    boundaries_png(paths, out_path.with_suffix(".png"))
    print("plans (rows of", out_path.with_suffix(".png"), "):", [v[0]["video"] for v in videos if "|" in v[0]["video"]])
    names = list(videos[0][0]["values"])
    table = []
    for name in names:
        tuning = [r["values"][name] for v in videos for r in v if r["group"] == "tuning"]
        modes = [("abs", None), ("rel floor 0.2", 0.2)] + [
            (f"rel floor q{q}", float(np.percentile(tuning, q))) for q in (0, 25, 50)
        ]
        for mode, floor in modes:
            points = []
            for v in videos:
                vals = [r["values"][name] for r in v] if floor is None else relative(v, name, floor)
                points += [
                    (x, r["label"], r["video"], r["chunk"], r["group"]) for r, x in zip(v, vals) if x is not None
                ]
            row = {"candidate": name, "mode": mode}
            for group in ("tuning", "seen once", "validation", "set C"):
                row[group] = spread([p for p in points if p[4] == group])
            row["in_caption_cut_videos"] = sorted(round(p[0], 3) for p in points if p[1] == "in-caption cut video")
            if row["tuning"]:
                table.append(row)
    table.sort(key=lambda r: -(r["tuning"]["margin"] or 0))
    # per chunk: the values of the best ten candidates and of the session-7 signal
    kept = list(dict.fromkeys([r["candidate"] for r in table][:10] + ["corr (now)", RUNTIME]))
    chunks = [{**r, "values": {n: round(r["values"][n], 4) for n in kept}} for v in videos for r in v]
    best: dict = {}
    for r in table:  # sorted: the first row of a candidate is its best mode
        best.setdefault(r["candidate"], r)
    rows = list(best.values()) + [r for r in table if r["candidate"] == "corr (now)" and r is not best["corr (now)"]]
    band = band_confirmers(videos, names)
    out_path.write_text(json.dumps({"table": rows, "chunks": chunks, "band": band}))
    labels = {}
    for r in chunks:
        labels.setdefault(r["group"], {}).setdefault(r["label"], 0)
        labels[r["group"]][r["label"]] += 1
    print("chunks:", labels)
    print(f"the runtime's signal ({RUNTIME}) per chunk; * = above {THRESHOLD}, + = in the band above {BAND}:")
    for r in chunks:
        flag = "*" if r["values"][RUNTIME] > THRESHOLD else "+" if r["values"][RUNTIME] > BAND else " "
        print(f"  {flag} {r['values'][RUNTIME]:.3f}  {r['label']:30s} {r['video'][:70]} #{r['chunk']}")
    if band:
        print(f"band ({BAND}, {THRESHOLD}]: cuts {band['cuts_in_band']}, non-cuts {band['noncuts_in_band']}")
        print(
            f"second signals that could confirm a cut there (lowest of {band['n_cuts']} cuts / highest band non-cut):"
        )
        for r in band["confirmers"][:6]:
            print(
                f"  {r['margin']}  {r['candidate']}: cuts >= {r['cuts_lowest']}, band non-cuts <= {r['band_noncuts_highest']}"
            )
    print(
        "| candidate | mode | tuning: cuts >= | non-cuts <= | margin | set B: cuts >= | non-cuts <= | validation: cuts >= | non-cuts <= |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    seen = set()
    for r in table:
        if r["candidate"] in seen and r["candidate"] != "corr (now)":
            continue  # the best mode of each candidate
        seen.add(r["candidate"])
        t, b, val = r["tuning"], r["seen once"] or {}, r["validation"] or {}
        print(
            f"| {r['candidate']} | {r['mode']} | {t['lowest_cut']} | {t['highest_noncut']} | {t['margin']} | "
            f"{b.get('lowest_cut')} | {b.get('highest_noncut')} | {val.get('lowest_cut')} | {val.get('highest_noncut')} |"
        )


if __name__ == "__main__":
    main()
