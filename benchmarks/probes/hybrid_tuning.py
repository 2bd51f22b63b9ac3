"""Quality per unit of work on captions, one JSON line per (caption, candidate) (no timing):
the tuning runs of the magrefresh (hybrid) section of RESULTS.md (issue 11).

    python benchmarks/probes/hybrid_tuning.py "CAPTION|CAPTION..." FRAMES STEPS|- 'JSON'

Same as tokenrate_quality.py (reference = chunked full compute, seed = caption index),
with the walls of the reference and the candidate (shared lock: not timings to report).
"""

import json
import sys
import time

from motioncache_vllm.bench.motionmap import recompute_motion_spearman
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.generate import generate_video

pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
prompts = sys.argv[1].split("|")
frames = int(sys.argv[2])
steps = int(sys.argv[3]) if sys.argv[3] != "-" else None
candidates = json.loads(sys.argv[4])
for i, prompt in enumerate(prompts):
    req = GenerationRequest(prompt=prompt, num_frames=frames, num_inference_steps=steps, seed=i)
    t = time.time()
    ref = generate_video(pipe, req)
    tr = time.time() - t
    for policy, cfg in candidates:
        t = time.time()
        r = generate_video(pipe, req, cache=CacheConfig.decode(policy, cfg))
        tc = time.time() - t
        rho = recompute_motion_spearman(r.recompute_map, ref.frames, pipe.causal_block_size)
        s = r.stats
        print(
            json.dumps(
                dict(
                    prompt=prompt,
                    policy=policy,
                    cfg=cfg,
                    ideal=round(s["ideal_speedup"], 3),
                    psnr=round(psnr_db(r.frames, ref.frames), 2),
                    fps=f"{s['full_steps']}/{s['partial_steps']}/{s['skipped_steps']}",
                    map=rho["median"],
                    tref=round(tr, 1),
                    t=round(tc, 1),
                )
            ),
            flush=True,
        )
