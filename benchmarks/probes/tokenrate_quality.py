"""Quality per unit of work of cache policies on captions (no timing): behind the
"tokenrate" tables of RESULTS.md (issue 11).

    python benchmarks/probes/tokenrate_quality.py "CAPTION|CAPTION..." FRAMES STEPS|- 'JSON'

JSON = list of [policy, policy_config]. Per caption (seed = its index): chunked full compute
(the reference), then each candidate: ideal speedup, PSNR against the reference,
full/partial/skipped stream-steps, and the recompute-map Spearman against per-block pixel
motion of the reference (median over chunks). Run under the shared CPU lock.
"""

import json
import sys

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
    ref = generate_video(pipe, req)
    for policy, cfg in candidates:
        r = generate_video(pipe, req, cache=CacheConfig.decode(policy, cfg))
        rho = recompute_motion_spearman(r.recompute_map, ref.frames, pipe.causal_block_size)
        s = r.stats
        print(
            f"{prompt[:30]:30s} {policy:10s} {cfg} ideal {s['ideal_speedup']:.3f} "
            f"psnr {psnr_db(r.frames, ref.frames):.2f} f/p/s {s['full_steps']}/{s['partial_steps']}/"
            f"{s['skipped_steps']} map {rho['median']}",
            flush=True,
        )
