"""Probe (RESULTS.md memory, decoding cost): runtime timers of unbounded float32 vs the
int8+int4 CFG pair at 25%, twice each, then a profile. Run: python benchmarks/probes/pool_decode_cost.py"""

import torch, cProfile, pstats
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import generate_video

torch.set_num_threads(2)
pipe = load_pipeline()
req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=33, seed=0)
c = CacheConfig.decode(
    policy="motion",
    policy_config={"threshold": 0.5},
    cfg_shared=True,
    pool_dtype="int8",
    cfg_delta_dtype="int4",
    pool_mib=0.094,
)
u = CacheConfig.decode(policy="motion", policy_config={"threshold": 0.5})
generate_video(pipe, req, cache=c)
for cfg in (u, c, u, c):
    r = generate_video(pipe, req, cache=cfg)
    print(cfg.pool_dtype, round(r.wall_s, 3), r.stats["timings"])
pr = cProfile.Profile()
pr.enable()
generate_video(pipe, req, cache=c)
pr.disable()
pstats.Stats(pr).sort_stats("tottime").print_stats(14)
