"""A chunk's own caching error vs the error it inherits through its context, around scene cuts.

    python benchmarks/probes/cut_teacher.py OUT.json 'JSON' "PROMPT|PROMPT|..." CHUNKS_PER_SCENE [BUDGET_S]

JSON = list of [policy, policy_config]. The video is a ``VideoPlan``: the first prompt for
CHUNKS_PER_SCENE chunks, each further prompt extends it by as many chunks (a new scene, seed
= its index), as ``cut_guard.py``; one prompt = one generation (a cut caption cuts inside it).
Reference = chunked full compute of the plan, stepped once, with a snapshot (latents + context
K/V of the finished chunks, runtime/snapshot.py) at every chunk boundary.

Per candidate and chunk c:
- free-running: the whole plan generated with the policy (its chunks attend to its own,
  cached, earlier chunks), PSNR of chunk c against the reference;
- teacher-forced: the plan resumed from the reference's snapshot after c chunks (exactly the
  reference's earlier latents and K/V, the same noise) and chunk c denoised with the policy:
  the error that chunk's caching alone makes.
Cut chunks: the scene starts, and (one prompt) the chunk holding the frame after the
reference's largest frame-to-frame jump. Per cut: median chunk PSNR minus the cut chunk's.

Resumable: the reference (frames + snapshots) is kept next to OUT.json, every finished
video / teacher-forced chunk is written to OUT.json at once, and no new piece of work
starts after BUDGET_S seconds (default 480): run it again to go on.
"""

import json
import statistics
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import torch

from motioncache_vllm.bench.suites import chunk_pixel_ranges
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.chunked import DenoiseRun
from motioncache_vllm.runtime.request import resolve
from motioncache_vllm.runtime.snapshot import GenerationSnapshot, VideoPlan
from motioncache_vllm.runtime.stepwise import PlanGeneration

T0 = time.perf_counter()
out_path, candidates, prompts, per_scene = (
    Path(sys.argv[1]),
    json.loads(sys.argv[2]),
    sys.argv[3].split("|"),
    int(sys.argv[4]),
)
budget = float(sys.argv[5]) if len(sys.argv) > 5 else 480.0
ref_dir = out_path.with_suffix(".ref")
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
t, block = pipe.vae_scale_factor_temporal, pipe.causal_block_size
frames_of = lambda chunks: (chunks * block - 1) * t + 1  # noqa: E731  (pixel frames of whole chunks)
plan = VideoPlan.of(resolve(pipe, GenerationRequest(prompt=prompts[0], num_frames=frames_of(per_scene), seed=0)))
for i, prompt in enumerate(prompts[1:], 1):
    plan = plan.extended(prompt, frames_of(per_scene * (i + 1)), seed=i)
ranges = chunk_pixel_ranges(plan.num_frames, block)
num_chunks = len(ranges)
results = json.loads(out_path.read_text()) if out_path.exists() else {}
if results and (results["prompts"] != prompts or results["chunks_per_scene"] != per_scene):
    raise SystemExit(f"{out_path} holds another video")


def save() -> None:
    out_path.write_text(json.dumps(results, indent=1))


def over_budget() -> bool:
    return time.perf_counter() - T0 > budget


# --- the runtime's signals at each step of the reference (research-side hook, no runtime change)
signals: dict = {}
_denoise_end = DenoiseRun._denoise_end


def _recording_denoise_end(self, lo, hi, tstep, calls):
    c, i = self.position
    x = self.latents[:, :, lo:hi].clone()
    pred = {b: call.out for b, call in zip(self.branches, calls)}
    noise = (
        pred["cond"]
        if len(self.branches) == 1
        else pred["uncond"] + self.guidance_scale * (pred["cond"] - pred["uncond"])
    )
    sigma = float(self._scheduler.sigmas[i])
    x0 = x - sigma * noise  # flow prediction: the step's estimate of the clean chunk
    rec = signals.setdefault(c, {"x0_jump": [], "x0_inner": [], "resid_change": []})
    if lo > 0:
        rec["x0_jump"].append(float((x0[:, :, 0] - self.latents[:, :, lo - 1]).abs().mean()))
    rec["x0_inner"].append(float((x0[:, :, 1:] - x0[:, :, :-1]).abs().mean()))
    stream = self.streams["cond"]
    prev = getattr(stream, "_probe_prev_residual", None)
    if stream.residual is not None:
        if prev is not None:
            change = (stream.residual - prev).abs().mean() / stream.residual.abs().mean().clamp_min(1e-12)
            rec["resid_change"].append(float(change))
        stream._probe_prev_residual = stream.residual.clone()
    _denoise_end(self, lo, hi, tstep, calls)


def reference() -> tuple[np.ndarray, list[GenerationSnapshot | None]]:
    """Frames of the full-compute plan and its snapshot before each chunk (None before chunk 0)."""
    if (ref_dir / "frames.npy").exists():
        frames = np.load(ref_dir / "frames.npy")
        snaps = [None] + [
            GenerationSnapshot.from_bytes((ref_dir / f"snap{c}.bin").read_bytes()) for c in range(1, num_chunks)
        ]
        return frames, snaps
    ref_dir.mkdir(exist_ok=True)
    DenoiseRun._denoise_end = _recording_denoise_end
    try:
        gen = PlanGeneration(pipe, plan, cache=CacheConfig.decode("none", {}))
        snaps: list = [None]
        try:
            while not gen.done:
                if gen.step() == "commit" and not gen.done:
                    snaps.append(gen.snapshot())
            frames = gen.result().frames
        finally:
            gen.close()
    finally:
        DenoiseRun._denoise_end = _denoise_end
    for c in range(1, num_chunks):
        (ref_dir / f"snap{c}.bin").write_bytes(snaps[c].to_bytes())
    np.save(ref_dir / "frames.npy", frames)
    (ref_dir / "plan.json").write_bytes(msgspec.json.encode(plan))
    results["signals"] = {str(c): v for c, v in signals.items()}
    return frames, snaps


results.setdefault("prompts", prompts)
results.setdefault("chunks_per_scene", per_scene)
results.setdefault("frames", plan.num_frames)
results.setdefault("rows", {})
ref, snaps = reference()
jumps = np.abs(np.diff(ref.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
if len(prompts) > 1:
    cut_chunks = [per_scene * i for i in range(1, len(prompts))]
else:  # the chunk holding the first frame after the largest jump
    after = int(np.argmax(jumps)) + 1
    cut_chunks = [next(c for c, (a, b) in enumerate(ranges) if a <= after < b)]
results["cut_chunks"] = cut_chunks
results["jump_over_median_at_chunk_starts"] = [
    round(float(jumps[a - 1]) / float(np.median(jumps)), 2) for a, _ in ranges[1:]
]
results["largest_jump"] = {
    "frame_after": int(np.argmax(jumps)) + 1,
    "over_median": round(float(jumps.max() / np.median(jumps)), 2),
}
save()
print(f"reference ready ({time.perf_counter() - T0:.0f} s)", flush=True)


def chunk_psnr(frames: np.ndarray, c: int) -> float:
    a, b = ranges[c]
    return round(min(psnr_db(frames[a:b], ref[a:b]), 99.0), 2)


def summary(per_chunk: list[float]) -> dict:
    median = statistics.median(per_chunk)
    return {"median_db": median, "cut_gap_db": [round(median - per_chunk[c], 2) for c in cut_chunks]}


for policy, cfg in candidates:
    key = json.dumps([policy, cfg])
    row = results["rows"].setdefault(key, {"policy": policy, "cfg": cfg, "teacher": {}})
    cache = CacheConfig.decode(policy, cfg)
    if "free" not in row:
        if over_budget():
            break
        t1 = time.perf_counter()
        gen = PlanGeneration(pipe, plan, cache=cache)
        try:
            while not gen.done:
                gen.step()
            r = gen.result()
        finally:
            gen.close()
        per_chunk = [chunk_psnr(r.frames, c) for c in range(num_chunks)]
        row["free"] = {
            "psnr_db": round(psnr_db(r.frames, ref), 2),
            "ideal_speedup": r.stats["ideal_speedup"],
            "psnr_db_per_chunk": per_chunk,
            "seconds": round(time.perf_counter() - t1, 1),
            "scene_cuts": r.stats["scene_cuts"],
            "scene_cut_band": r.stats.get("scene_cut_band", []),
            **summary(per_chunk),
        }
        save()
        print(key, "free", row["free"], flush=True)
    for c in range(num_chunks):
        if str(c) in row["teacher"]:
            continue
        if over_budget():
            break
        gen = PlanGeneration(pipe, plan, snapshot=snaps[c], cache=cache)
        try:
            before = gen.gen.run.counters
            total0, computed0 = before.token_steps_total, before.token_steps_computed  # restored: the reference's
            cuts0, band0 = len(before.cut_chunks), len(getattr(before, "cut_band_chunks", []))
            while gen.chunks_denoised <= c:
                gen.step()
            with torch.inference_mode():
                frames = gen.frames_so_far()
            stats = gen.gen.run.counters
            row["teacher"][str(c)] = {
                "psnr_db": chunk_psnr(frames, c),
                "guard_fired": len(stats.cut_chunks) > cuts0,
                "band_fired": len(getattr(stats, "cut_band_chunks", [])) > band0,
                "computed_share": round(
                    (stats.token_steps_computed - computed0) / max(stats.token_steps_total - total0, 1), 4
                ),
            }
        finally:
            gen.close()
        save()
        print(key, "teacher chunk", c, row["teacher"][str(c)], flush=True)
    if len(row["teacher"]) == num_chunks and "teacher_summary" not in row:
        per_chunk = [row["teacher"][str(c)]["psnr_db"] for c in range(num_chunks)]
        row["teacher_summary"] = {"psnr_db_per_chunk": per_chunk, **summary(per_chunk)}
        save()
        print(key, "teacher", row["teacher_summary"], flush=True)
complete = sum("teacher_summary" in results["rows"].get(json.dumps([p, c]), {}) for p, c in candidates)
state = "all done" if complete == len(candidates) else "done for now: run again to go on"
print(f"{state} ({complete} of {len(candidates)} candidates complete, {time.perf_counter() - T0:.0f} s)", flush=True)
