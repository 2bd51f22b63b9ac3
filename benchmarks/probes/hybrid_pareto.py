"""Wall-clock speedup, quality, recompute map and per-chunk PSNR of cache policies on caption
sets: behind the ``magrefresh`` (hybrid) tables of RESULTS.md (issue 11).

    python benchmarks/probes/hybrid_pareto.py OUT.json 'JSON' REPEATS FILE [FILE ...]

JSON = list of [policy, policy_config] or [policy, policy_config, pool_settings] (PoolConfig
fields, e.g. ``{"cfg_batched": true}``); ``MC_POOL='{"cfg_batched": true}'`` gives the stock loop's
reference companion "none" (chunked full compute) those pool settings too. Per caption file (a set; seed = caption index),
per caption: the stock loop ("vanilla", the reference and the speedup's base), chunked full
compute ("none") and every candidate run round robin ``REPEATS`` times (medians), as
``motioncache bench pareto`` does. Per set and candidate: speedup = sum of vanilla walls /
sum of the candidate's, mean PSNR vs vanilla, mean ideal speedup, the recompute-map
Spearman against per-block pixel motion of the reference (median over chunks, per
caption) and the per-chunk PSNR (for cuts: the first chunk after the cut against the
video's median chunk). Timing figures only from a run under the exclusive CPU lock.
"""

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

from motioncache_vllm.bench.motionmap import recompute_motion_spearman
from motioncache_vllm.bench.suites import chunk_pixel_ranges
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.generate import generate_video

FRAMES = 33

out_path, candidates, repeats, files = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
base_pool = json.loads(os.environ.get("MC_POOL", "{}"))
everyone = [
    ("vanilla", None, {}),
    ("none", {}, base_pool),
    *[(c[0], c[1], c[2] if len(c) > 2 else {}) for c in candidates],
]
result = {"frames": FRAMES, "repeats": repeats, "candidates": everyone, "sets": {}}
for path in files:
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    rows = {i: [] for i in range(len(everyone))}
    for seed, prompt in enumerate(prompts):
        req = GenerationRequest(prompt=prompt, num_frames=FRAMES, seed=seed)
        walls, outputs = {i: [] for i in range(len(everyone))}, {}
        for _ in range(repeats):
            for i, (policy, cfg, pool) in enumerate(everyone):
                if policy == "vanilla":
                    r = generate_video(pipe, req, runtime="vanilla")
                else:
                    r = generate_video(pipe, req, cache=CacheConfig.decode(policy, cfg, **pool))
                walls[i].append(r.wall_s)
                outputs.setdefault(i, r)
        ref = outputs[0].frames
        ranges = chunk_pixel_ranges(FRAMES, pipe.causal_block_size)
        # the reference's largest frame-to-frame change (the cut, in a cut caption) and its chunk
        jumps = np.abs(np.diff(ref.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
        cut_frame = int(jumps.argmax()) + 1
        cut_chunk = next(c for c, (a, b) in enumerate(ranges) if a <= cut_frame < b)
        for i, (policy, cfg, pool) in enumerate(everyone):
            r = outputs[i]
            per_chunk = [round(min(psnr_db(r.frames[a:b], ref[a:b]), 99.0), 2) for a, b in ranges]
            rho = None
            if policy != "vanilla":
                rho = recompute_motion_spearman(r.recompute_map, ref, pipe.causal_block_size)["median"]
            row = {
                "prompt": prompt,
                "wall_s": statistics.median(walls[i]),
                "psnr_db": round(min(psnr_db(r.frames, ref), 99.0), 3),
                "psnr_db_per_chunk": per_chunk,
                "ideal_speedup": r.stats.get("ideal_speedup"),
                "steps": f"{r.stats.get('full_steps')}/{r.stats.get('partial_steps')}/{r.stats.get('skipped_steps')}",
                "map_spearman": rho,
                # chunks the scene-cut guard computed in full (above its threshold / in its band)
                "scene_cuts": r.stats.get("scene_cuts"),
                "scene_cut_band": r.stats.get("scene_cut_band"),
                "cut_frame": cut_frame,
                "cut_chunk": cut_chunk,
                # median chunk PSNR minus the PSNR of the chunk holding the cut (<= 3 dB wanted)
                "cut_gap_db": round(statistics.median(per_chunk) - per_chunk[cut_chunk], 2),
            }
            rows[i].append(row)
            print(json.dumps({"set": path, "policy": policy, "cfg": cfg, "pool": pool, **row}), flush=True)
    base = sum(r["wall_s"] for r in rows[0])
    summary = []
    for i, (policy, cfg, pool) in enumerate(everyone):
        ideal = [r["ideal_speedup"] for r in rows[i] if r["ideal_speedup"] is not None]
        summary.append(
            {
                "policy": policy,
                "cfg": cfg,
                "pool": pool,
                "speedup": round(base / sum(r["wall_s"] for r in rows[i]), 3),
                "psnr_db": round(statistics.mean(r["psnr_db"] for r in rows[i]), 2),
                "ideal_speedup": round(statistics.mean(ideal), 3) if ideal else None,
            }
        )
        print(json.dumps({"set": path, "summary": summary[-1]}), flush=True)
    result["sets"][path] = {"prompts": prompts, "rows": rows, "summary": summary}
    Path(out_path).write_text(json.dumps(result, indent=1))
