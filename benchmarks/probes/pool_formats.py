"""Probe (README/RESULTS pool-format figures): one 17-frame video under each pool format and
budget, PSNR against the stock loop. Run: python benchmarks/probes/pool_formats.py"""

import torch, sys
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.metrics import psnr_db

torch.set_num_threads(2)
pipe = load_pipeline()
frames = int(sys.argv[1]) if len(sys.argv) > 1 else 17
req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=frames, seed=0)
ref = generate_video(pipe, req, runtime="vanilla")
base = dict(policy="motion", policy_config={"threshold": 0.5})
need = 2 * 64 * 3 * 256 * 4
q = need * 0.25 / 2**20
runs = {
    "chunked none": CacheConfig.decode(),
    "unbounded f32": CacheConfig.decode(**base),
    "shared f32": CacheConfig.decode(**base, cfg_shared=True),
    "pair f32/f32": CacheConfig.decode(**base, cfg_shared=True, cfg_delta_dtype="float32"),
    "int8 (per-branch) unb": CacheConfig.decode(**base, pool_dtype="int8"),
    "pair int8/int8 unb": CacheConfig.decode(**base, cfg_shared=True, pool_dtype="int8", cfg_delta_dtype="int8"),
    "pair int8/int4 unb": CacheConfig.decode(**base, cfg_shared=True, pool_dtype="int8", cfg_delta_dtype="int4"),
    "pair int8/int4 25%": CacheConfig.decode(
        **base, cfg_shared=True, pool_dtype="int8", cfg_delta_dtype="int4", pool_mib=q
    ),
    "pair int4/int4 25%": CacheConfig.decode(
        **base, cfg_shared=True, pool_dtype="int4", cfg_delta_dtype="int4", pool_mib=q
    ),
    "f16 25% lru": CacheConfig.decode(**base, pool_dtype="float16", pool_mib=q, eviction="lru"),
}
for name, c in runs.items():
    r = generate_video(pipe, req, cache=c)
    st = r.stats
    print(
        f"{name:24s} wall {r.wall_s:6.2f} speedup {ref.wall_s / r.wall_s:5.2f} psnr {psnr_db(r.frames, ref.frames):6.2f} ideal {st.get('ideal_speedup')} forced {st.get('forced_blocks')} peak {st.get('pool_peak_bytes')}",
        flush=True,
    )
