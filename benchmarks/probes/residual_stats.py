"""Probe (codec and CFG-pair figures): on full-compute residuals of the embedded model,
|R_u - R_c| / |R_c| and the relative error of per-row int8/int4 storage, plain, channel-scaled
and Hadamard-rotated. Run: python benchmarks/probes/residual_stats.py"""

import torch, numpy as np
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import generate_video
from motioncache_vllm.runtime import chunked

torch.set_num_threads(2)
pipe = load_pipeline()
cap = []
orig = chunked.ChunkStream._store


def store(self, blocks, residual):
    cap.append((self.owner, self.state.step, residual.clone()))
    return orig(self, blocks, residual)


chunked.ChunkStream._store = store
req = GenerationRequest(prompt="a red circle moves right slowly", num_frames=17, seed=0)
generate_video(pipe, req, cache=CacheConfig.decode(policy="none"))
by = {}
for (rid, c, b), step, r in cap:
    by[(c, step, b)] = r
rel = []
outl = []
for (c, step, b), r in by.items():
    if b != "cond":
        continue
    u = by.get((c, step, "uncond"))
    if u is None:
        continue
    rel.append(float((u - r).norm() / r.norm()))
    ch = r.abs().amax(0)
    outl.append(float(ch.max() / ch.median()))
print("steps", len(rel), "||Ru-Rc||/||Rc|| median", np.median(rel), "min", min(rel), "max", max(rel))
print("channel absmax max/median", np.median(outl), max(outl))


# quantisation error relative of per-row int8 on R and on D
def q8row(x):
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    return torch.round(x / s) * s


def q8chan(x):  # per-channel then per-row
    cs = x.abs().amax(0, keepdim=True).clamp_min(1e-12)
    return q8row(x / cs) * cs


e = []
e2 = []
ed = []
ed4 = []
for (c, step, b), r in by.items():
    if b != "cond":
        continue
    u = by.get((c, step, "uncond"))
    e.append(float((q8row(r) - r).norm() / r.norm()))
    e2.append(float((q8chan(r) - r).norm() / r.norm()))
    d = u - r
    ed.append(float((q8row(d) - d).norm() / u.norm()))
print("int8 row rel err", np.median(e), "int8 chan+row", np.median(e2), "delta int8 err rel to Ru", np.median(ed))
from scipy.linalg import hadamard

H = torch.tensor(hadamard(256), dtype=torch.float32) / 16.0


def qrow(x, levels):
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / levels
    return torch.clamp(torch.round(x / s), -levels, levels) * s


def had(x, levels):
    return qrow(x @ H, levels) @ H.T


res = {k: [] for k in ["h8R", "h4R", "h8D", "h4D", "r4R", "c4R"]}
for (c, step, b), r in by.items():
    if b != "cond":
        continue
    u = by[(c, step, "uncond")]
    d = u - r
    res["h8R"].append(float((had(r, 127) - r).norm() / r.norm()))
    res["h4R"].append(float((had(r, 7) - r).norm() / r.norm()))
    res["r4R"].append(float((qrow(r, 7) - r).norm() / r.norm()))
    res["h8D"].append(float((had(d, 127) - d).norm() / u.norm()))
    res["h4D"].append(float((had(d, 7) - d).norm() / u.norm()))
for k, v in res.items():
    print(k, np.median(v))
