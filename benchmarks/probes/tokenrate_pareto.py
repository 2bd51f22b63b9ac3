"""tokenrate against the step-level caches at equal wall-clock speedup, on a caption file.

    flock -x /tmp/mc-cpu.lock python benchmarks/probes/tokenrate_pareto.py \\
        --prompts benchmarks/prompts_unseen.txt --name unseen

One process; per caption the stock loop (vanilla), chunked full compute and every candidate
run once, interleaved; speedup = summed vanilla wall / summed candidate wall over the
captions; PSNR/SSIM against the vanilla output of the same seed (mean over captions);
recompute-map Spearman (per-block recompute counts vs per-block pixel motion of the
vanilla video, median over chunks) for the per-token policies. Writes
benchmarks/results/tokenrate_<name>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CANDIDATES = {
    "teacache": [0.2, 0.5],
    "flowcache": [0.2, 0.5],
    "magcache": [0.06, 0.24],
    "tokenrate": [0.3, 0.6, 1.0],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()

    from motioncache_vllm.bench.motionmap import recompute_motion_spearman
    from motioncache_vllm.bench.prompts import load_prompts
    from motioncache_vllm.bench.common import label_axes, machine_info, pyplot, save_figure
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.metrics import psnr_db, ssim
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    pipe = load_pipeline("embedded")
    pipe.set_progress_bar_config(disable=True)
    prompts = load_prompts(args.prompts)
    runs = [("vanilla", None), ("none", None)] + [(p, t) for p, ts in CANDIDATES.items() for t in ts]
    rows: dict[tuple, list[dict]] = {run: [] for run in runs}
    t_start = time.time()
    for i, prompt in enumerate(prompts):
        req = GenerationRequest(prompt=prompt, num_frames=args.frames, seed=i)
        ref = None
        for policy, threshold in runs:
            if policy == "vanilla":
                res = generate_video(pipe, req, runtime="vanilla")
                ref = res.frames
            else:
                cfg = {} if threshold is None else {"threshold": threshold}
                res = generate_video(pipe, req, cache=CacheConfig(policy=policy, policy_config=cfg))
            row = {"prompt": prompt, "wall_s": res.wall_s, "psnr_db": min(psnr_db(res.frames, ref), 99.0),
                   "ssim": ssim(res.frames, ref), "ideal": res.stats.get("ideal_speedup"),
                   "steps": [res.stats.get(k) for k in ("full_steps", "partial_steps", "skipped_steps")]}
            if policy in ("tokenrate", "flowcache") and res.recompute_map is not None:
                row["map_spearman"] = recompute_motion_spearman(res.recompute_map, ref, pipe.causal_block_size)
            rows[(policy, threshold)].append(row)
            print(f"{time.time() - t_start:7.1f}s {prompt[:40]:40s} {policy:10s} {threshold} "
                  f"{res.wall_s:.2f}s {row['psnr_db']:.2f} dB", flush=True)
    base = sum(r["wall_s"] for r in rows[("vanilla", None)])
    points = []
    for (policy, threshold), rs in rows.items():
        point = {"policy": policy, "threshold": threshold, "speedup": round(base / sum(r["wall_s"] for r in rs), 3),
                 "psnr_db": round(statistics.mean(r["psnr_db"] for r in rs), 3),
                 "ssim": round(statistics.mean(r["ssim"] for r in rs), 4),
                 "ideal": None if rs[0]["ideal"] is None else round(statistics.mean(r["ideal"] for r in rs), 3),
                 "per_prompt": rs}
        maps = [r["map_spearman"]["median"] for r in rs if "map_spearman" in r]
        if maps:
            point["map_spearman_per_prompt"] = maps
        points.append(point)
    result = {"name": args.name, "prompts": prompts, "frames": args.frames, "points": points,
              "machine": machine_info()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"tokenrate_{args.name}.json").write_text(json.dumps(result, indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for policy in dict.fromkeys(p["policy"] for p in points):
        pts = sorted((p for p in points if p["policy"] == policy), key=lambda p: p["speedup"])
        ax.plot([p["speedup"] for p in pts], [p["psnr_db"] for p in pts], "o-", label=policy)
    label_axes(ax, "speedup vs vanilla pipeline (wall clock)", "PSNR vs vanilla output (dB)",
               f"tokenrate vs step caches: {args.name} captions, {args.frames} frames")
    save_figure(fig, out / f"tokenrate_{args.name}.png")
    print("| policy | threshold | speedup | PSNR dB | SSIM | ideal | map Spearman per caption |")
    print("|---|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p['policy']} | {p['threshold']} | {p['speedup']:.2f}x | {p['psnr_db']:.2f} | {p['ssim']:.4f} | "
              f"{p['ideal']} | {p.get('map_spearman_per_prompt', '-')} |")


if __name__ == "__main__":
    main()
