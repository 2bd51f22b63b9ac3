"""Raw material for scene-cut signals: what the runtime has at each chunk's first step.

    python benchmarks/probes/cut_signals.py OUT_DIR BUDGET_S SPEC...

SPEC is ``plan:CHUNKS_PER_SCENE:PROMPT|PROMPT|...`` (a ``VideoPlan``, each further prompt an
extension of CHUNKS_PER_SCENE chunks with seed = its index, as ``cut_teacher.py``) or
``file:FRAMES:PATH`` (one video per caption of PATH, ``bench`` = the bench's held-out set,
seed = the caption's index, as ``cut_false_positives.py``). Every video is the full-compute
reference (policy ``none``): its chunks see the reference's exact context, so what is recorded
here is what the guard sees teacher-forced, whatever the policy.

Per video one ``.npz`` in OUT_DIR: per chunk c at its first step the noisy chunk ``x{c}``, the
two CFG branches' predictions ``cond{c}``/``uncond{c}``, the guidance scale and the step's sigma
(``sigmas``); the final latents
(``latents``) and pixel frames (``frames``); ``meta`` (JSON: prompts, scene starts, chunk
pixel ranges). Candidate signals are computed from these offline (``cut_separators.py``).
Resumable: a video whose file exists is skipped; no new video starts after BUDGET_S seconds.
"""

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from motioncache_vllm.bench.prompts import held_out_set, load_prompts
from motioncache_vllm.bench.suites import chunk_pixel_ranges
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.chunked import DenoiseRun
from motioncache_vllm.runtime.request import resolve
from motioncache_vllm.runtime.snapshot import VideoPlan
from motioncache_vllm.runtime.stepwise import PlanGeneration

T0 = time.perf_counter()
out_dir, budget, specs = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
out_dir.mkdir(parents=True, exist_ok=True)
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
t, block = pipe.vae_scale_factor_temporal, pipe.causal_block_size
frames_of = lambda chunks: (chunks * block - 1) * t + 1  # noqa: E731  (pixel frames of whole chunks)


def videos():
    """(name, prompts, seeds, scene start chunks, VideoPlan) of every SPEC."""
    for spec in specs:
        kind, n, rest = spec.split(":", 2)
        if kind == "plan":
            prompts, per = rest.split("|"), int(n)
            plan = VideoPlan.of(resolve(pipe, GenerationRequest(prompt=prompts[0], num_frames=frames_of(per), seed=0)))
            for i, p in enumerate(prompts[1:], 1):
                plan = plan.extended(p, frames_of(per * (i + 1)), seed=i)
            yield rest, prompts, [per * i for i in range(1, len(prompts))], plan
        elif kind == "file":
            captions = held_out_set() if rest == "bench" else load_prompts(rest)
            for seed, prompt in enumerate(captions):
                req = GenerationRequest(prompt=prompt, num_frames=int(n), seed=seed)
                yield f"{prompt} @{n}", [prompt], [], VideoPlan.of(resolve(pipe, req))
        else:
            raise SystemExit(f"unknown SPEC kind {kind!r} (plan or file)")


rec: dict = {}
_denoise_end = DenoiseRun._denoise_end


def _recording(self, lo, hi, tstep, calls):
    c, i = self.position
    if i == 0:
        rec[f"x{c}"] = self.latents[:, :, lo:hi].float().numpy().copy()
        for b, call in zip(self.branches, calls):
            rec[f"{b}{c}"] = call.out.float().numpy().copy()
        rec.setdefault("sigmas", []).append(float(self._scheduler.sigmas[0]))
    _denoise_end(self, lo, hi, tstep, calls)


DenoiseRun._denoise_end = _recording
for name, prompts, starts, plan in videos():
    path = out_dir / (hashlib.sha1(name.encode()).hexdigest()[:12] + ".npz")
    if path.exists():
        continue
    if time.perf_counter() - T0 > budget:
        print("budget spent; run again to go on", flush=True)
        sys.exit(0)
    rec = {}
    gen = PlanGeneration(pipe, plan, cache=CacheConfig.decode("none", {}))
    try:
        with torch.inference_mode():
            while not gen.done:
                gen.step()
            r = gen.result()
            latents = gen.gen.run.latents.float().numpy().copy()
    finally:
        gen.close()
    meta = {
        "name": name,
        "prompts": prompts,
        "scene_starts": starts,
        "ranges": chunk_pixel_ranges(plan.num_frames, block),
    }
    np.savez_compressed(
        path,
        latents=latents,
        frames=r.frames,
        sigmas=np.array(rec.pop("sigmas")),
        guidance=plan.guidance,
        meta=json.dumps(meta),
        **rec,
    )
    print(f"{name}: {time.perf_counter() - T0:.0f} s", flush=True)
print(f"done ({time.perf_counter() - T0:.0f} s)", flush=True)
