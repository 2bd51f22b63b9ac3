"""Scene cuts in a long video: per-chunk PSNR of the first chunk after each cut against the
video's median chunk (issue 11's done-when: within 3 dB), quality only (no timing).

    python benchmarks/probes/cut_guard.py OUT.json 'JSON' "PROMPT|PROMPT|..." CHUNKS_PER_SCENE

JSON = list of [policy, policy_config]. The video is one plan (runtime/snapshot.VideoPlan):
the first prompt for CHUNKS_PER_SCENE chunks, then each further prompt extends it by as
many chunks (a new scene: seed = its index), so a cut sits at every segment boundary.
Reference = chunked full compute of the same plan. Per candidate: per-chunk PSNR, the
reference's mean frame-to-frame jump at each boundary (against the median jump: is it a
cut?), and per cut, median chunk PSNR minus the PSNR of the chunk after the cut.
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np

from motioncache_vllm.bench.suites import chunk_pixel_ranges
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.request import resolve
from motioncache_vllm.runtime.snapshot import VideoPlan
from motioncache_vllm.runtime.stepwise import PlanGeneration

out_path, candidates, prompts, per_scene = (
    sys.argv[1],
    json.loads(sys.argv[2]),
    sys.argv[3].split("|"),
    int(sys.argv[4]),
)
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
t, block = pipe.vae_scale_factor_temporal, pipe.causal_block_size
frames_of = lambda chunks: (chunks * block - 1) * t + 1  # noqa: E731  (pixel frames of whole chunks)
plan = VideoPlan.of(resolve(pipe, GenerationRequest(prompt=prompts[0], num_frames=frames_of(per_scene), seed=0)))
for i, prompt in enumerate(prompts[1:], 1):
    plan = plan.extended(prompt, frames_of(per_scene * (i + 1)), seed=i)


def generate(policy, cfg):
    gen = PlanGeneration(pipe, plan, cache=CacheConfig.decode(policy, cfg))
    try:
        while not gen.done:
            gen.step()
        return gen.result()
    finally:
        gen.close()


ref = generate("none", {}).frames
ranges = chunk_pixel_ranges(plan.num_frames, block)
cut_chunks = [per_scene * i for i in range(1, len(prompts))]
jumps = np.abs(np.diff(ref.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
boundary_jump = [round(float(jumps[ranges[c][0] - 1]) / float(np.median(jumps)), 2) for c in cut_chunks]
rows = []
for policy, cfg in candidates:
    r = generate(policy, cfg)
    per_chunk = [round(min(psnr_db(r.frames[a:b], ref[a:b]), 99.0), 2) for a, b in ranges]
    median = statistics.median(per_chunk)
    row = {
        "policy": policy,
        "cfg": cfg,
        "psnr_db": round(psnr_db(r.frames, ref), 2),
        "ideal_speedup": r.stats.get("ideal_speedup"),
        "psnr_db_per_chunk": per_chunk,
        "cut_chunks": cut_chunks,
        "cut_gap_db": [round(median - per_chunk[c], 2) for c in cut_chunks],
        "boundary_jump_over_median": boundary_jump,
    }
    rows.append(row)
    print(json.dumps(row), flush=True)
Path(out_path).write_text(json.dumps({"prompts": prompts, "frames": plan.num_frames, "rows": rows}, indent=1))
