"""Probe (benchmarks/RESULTS.md, memory): 4 requests interleaved unit by unit on one shared
paired pool, motion-aware vs LRU eviction vs admission control. Run: python benchmarks/probes/shared_pool.py"""

import time, torch
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.runtime.request import make_pool
from motioncache_vllm.runtime.stepwise import StepwiseGeneration
from motioncache_vllm.metrics import psnr_db

torch.set_num_threads(2)
pipe = load_pipeline()
prompts = [
    "static scene",
    "a red circle moves right slowly",
    "a green square moves left quickly",
    "a green square bounces left",
]
reqs = [GenerationRequest(prompt=p, num_frames=17, seed=i) for i, p in enumerate(prompts)]
refs = [generate_video(pipe, r) for r in reqs]
pair_need = 64 * 1176  # one request's chunk, paired int8+int4
for n_req in (2, 4):
    for share in (0.5, 0.75):
        for ev in ("motion", "lru", "admit"):
            budget = share * n_req * pair_need
            cache = CacheConfig.decode(
                policy="motion",
                policy_config={"threshold": 0.5},
                cfg_shared=True,
                pool_dtype="int8",
                cfg_delta_dtype="int4",
                pool_mib=budget / 2**20,
                eviction=ev,
            )
            pool = make_pool(pipe, cache.pool)
            gens = [
                StepwiseGeneration(pipe, r, cache=cache, pool=pool, request_id=f"r{i}")
                for i, r in enumerate(reqs[:n_req])
            ]
            t0 = time.perf_counter()
            while not all(g.done for g in gens):
                for g in gens:
                    if not g.done:
                        g.step()
            wall = time.perf_counter() - t0
            res = [g.result() for g in gens]
            comp = sum(r.stats["token_steps_computed"] for r in res)
            tot = sum(r.stats["token_steps_total"] for r in res)
            q = sum(psnr_db(r.frames, ref.frames) for r, ref in zip(res, refs)) / n_req
            print(
                f"requests {n_req} pool {share:.0%} of their need eviction {ev:6s} computed {comp / tot:.3f} of token-steps wall {wall:.2f}s psnr-vs-full {q:.2f} evictions {pool.stats.evictions}",
                flush=True,
            )
