"""Where a full, a partial and a skipped step's time goes on the chunked runtime (issue 11,
session 11): one ``steperror`` generation of the embedded model (33 frames, 30 steps, seed 0),
every transformer call split into sections with ``perf_counter`` (forward hooks on the
embeddings, the RoPE table, each block's self-attention, cross-attention and its text
``to_k``/``to_v``, FFN, the output head; wrappers on the adapter's plan and the streams'
``finish``), grouped by the call's mode.

    python benchmarks/probes/partial_split.py OUT.json [THRESHOLD REFRESH_FRACTION REFRESH_WITHIN [PROMPT]]

Defaults: 0.03, 0.1, 2, "a white circle moves down slowly". ``MC_CFG_BATCHED=1``: the
``cfg_batched`` setting (both CFG branches of a step in one transformer call; frames then differ
by float reassociation, at most 1/255). One warm-up generation first. Milliseconds per call (per
step when batched): ``call_total`` and its sections; ``blocks`` = the block hooks minus the plan
and ``finish``; ``blk.other`` = blocks minus attention and FFN (modulation, norms, residual adds,
hook dispatch); ``transformer_other`` = the call minus every named section (patchify, causal mask,
timestep table repeats, output reshape). A timing: run it under the exclusive CPU lock.
"""

import json
import os
import sys
import time
from collections import defaultdict

import torch

import motioncache_vllm.models.wan_adapter as wa
import motioncache_vllm.runtime.chunked as ch
import motioncache_vllm.runtime.stream as st
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.generate import generate_video

out_path = sys.argv[1]
threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 0.03
refresh_fraction = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
refresh_within = int(sys.argv[4]) if len(sys.argv) > 4 else 2
prompt = sys.argv[5] if len(sys.argv) > 5 else "a white circle moves down slowly"
batched = os.environ.get("MC_CFG_BATCHED") == "1"
clock = time.perf_counter

pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
tr = pipe.transformer
sections: dict[str, float] = defaultdict(float)  # of the call running now
per_mode: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
calls: dict[str, int] = defaultdict(int)
steps: dict[str, int] = defaultdict(int)
outside: dict[str, float] = defaultdict(float)


def timed(module: torch.nn.Module, name: str) -> None:
    starts: list[float] = []
    module.register_forward_pre_hook(lambda m, a: starts.append(clock()))

    def post(m, a, o):
        sections[name] += clock() - starts.pop()

    module.register_forward_hook(post)


for name, module in [
    ("rope", tr.rope),
    ("patch_embed", tr.patch_embedding),
    ("cond_embedder", tr.condition_embedder),
    ("cond.text", tr.condition_embedder.text_embedder),
    ("norm_out", tr.norm_out),
    ("proj_out", tr.proj_out),
]:
    timed(module, name)
for block in tr.blocks:
    timed(block.attn1, "blk.attn1")
    timed(block.attn2, "blk.attn2")
    timed(block.attn2.to_k, "blk.attn2.to_k(text)")
    timed(block.attn2.to_v, "blk.attn2.to_v(text)")
    timed(block.ffn, "blk.ffn")


def wrap(owner, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    def wrapper(*args, **kwargs):
        t0 = clock()
        try:
            return original(*args, **kwargs)
        finally:
            sections[name] += clock() - t0

    setattr(owner, attr, wrapper)


wrap(wa._BlockHook, "new_forward", "hooks_total")
wrap(wa, "_plan_groups", "plan_groups")
wrap(st.ChunkStream, "finish", "finish")


def record(stream, seconds: float) -> None:
    mode = "commit" if stream.commit else stream._mode
    calls[mode] += 1
    per_mode[mode]["call_total"] += seconds
    for key, value in sections.items():
        per_mode[mode][key] += value


original_call, original_batch = ch.ChunkedRunner._call, ch.ChunkedRunner.call_batch


def _call(self, stream, *args, **kwargs):
    sections.clear()
    t0 = clock()
    try:
        return original_call(self, stream, *args, **kwargs)
    finally:
        record(stream, clock() - t0)


def call_batch(self, batch):
    if len(batch) == 1:
        return original_batch(self, batch)
    sections.clear()
    t0 = clock()
    try:
        return original_batch(self, batch)
    finally:
        record(batch[0].stream, clock() - t0)


ch.ChunkedRunner._call, ch.ChunkedRunner.call_batch = _call, call_batch
original_end, original_begin = ch.DenoiseRun._denoise_end, ch.DenoiseRun.begin_unit


def _denoise_end(self, lo, hi, t, units):
    steps[units[0].stream._mode] += 1
    t0 = clock()
    try:
        return original_end(self, lo, hi, t, units)
    finally:
        outside["denoise_end"] += clock() - t0


def begin_unit(self):
    t0 = clock()
    try:
        return original_begin(self)
    finally:
        outside["begin_unit"] += clock() - t0


ch.DenoiseRun._denoise_end, ch.DenoiseRun.begin_unit = _denoise_end, begin_unit

request = GenerationRequest(prompt=prompt, num_frames=33, seed=0)
config = {"threshold": threshold}
if refresh_fraction:
    config.update(refresh_fraction=refresh_fraction, refresh_within=refresh_within)
generate_video(pipe, request, cache=CacheConfig.decode("steperror", {"threshold": threshold}, cfg_batched=batched))
for table in (per_mode, calls, outside, steps):  # the above was the warm-up
    table.clear()
t0 = clock()
r = generate_video(pipe, request, cache=CacheConfig.decode("steperror", config, cfg_batched=batched))
result = {
    "config": config,
    "prompt": prompt,
    "cfg_batched": batched,
    "threads": torch.get_num_threads(),
    "wall_s": clock() - t0,
    "calls": dict(calls),
    "steps": dict(steps),
    "stats": {k: r.stats.get(k) for k in ("full_steps", "partial_steps", "skipped_steps", "ideal_speedup")},
    "outside_s": dict(outside),
    "per_call_ms": {},
}
for mode, secs in per_mode.items():
    ms = {k: 1e3 * v / calls[mode] for k, v in secs.items()}
    ms["blocks"] = ms.get("hooks_total", 0) - ms.get("plan_groups", 0) - ms.get("finish", 0)
    named = ("rope", "patch_embed", "cond_embedder", "hooks_total", "norm_out", "proj_out")
    ms["transformer_other"] = ms["call_total"] - sum(ms.get(k, 0) for k in named)
    ms["blk.other"] = ms["blocks"] - sum(ms.get(k, 0) for k in ("blk.attn1", "blk.attn2", "blk.ffn"))
    result["per_call_ms"][mode] = {k: round(v, 3) for k, v in sorted(ms.items())}
print(json.dumps(result, indent=1))
with open(out_path, "w") as f:
    json.dump(result, f, indent=1)
