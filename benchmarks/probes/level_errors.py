"""How far from the stock loop's frames a cache's video is, in 8-bit levels: behind RESULTS.md's
reading of the 3.3-4x band (issue 11), where every point of either family is above 53 dB.

    python benchmarks/probes/level_errors.py OUT.json 'JSON' FILE

JSON = list of [policy, policy_config, pool_settings] as for ``hybrid_pareto.py``; per caption
of FILE (seed 0, 33 frames, the embedded model, one caption per invocation in the wall runs, so
seed 0 here too): the stock loop's video, then each candidate's; per candidate and caption the
PSNR (uint8 RGB, the whole video's MSE), the share of pixel values that differ by >= 1, >= 2 and
>= 4 levels, and the largest difference. Quality only: no timing.
"""

import json
import sys
from pathlib import Path

import numpy as np

from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.generate import generate_video

FRAMES = 33

out_path, candidates, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
rows = []
for prompt in [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]:
    req = GenerationRequest(prompt=prompt, num_frames=FRAMES, seed=0)
    ref = generate_video(pipe, req, runtime="vanilla").frames.astype(np.int16)
    for policy, cfg, pool in candidates:
        r = generate_video(pipe, req, cache=CacheConfig.decode(policy, cfg, **pool))
        diff = np.abs(r.frames.astype(np.int16) - ref)
        row = {
            "prompt": prompt,
            "policy": policy,
            "cfg": cfg,
            "pool": pool,
            "psnr_db": round(float(psnr_db(r.frames, ref.astype(np.uint8))), 2),
            "ideal_speedup": r.stats["ideal_speedup"],
            **{f"share_ge{k}": float((diff >= k).mean()) for k in (1, 2, 4)},
            "max_diff": int(diff.max()),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
Path(out_path).write_text(json.dumps(rows, indent=1))
