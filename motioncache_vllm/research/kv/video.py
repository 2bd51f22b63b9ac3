"""Video suites: context K/V of finished frames under a budget, per eviction policy.

Quality is measured against the full-K/V video of the same seed and settings (the
runtime's default store): PSNR over the whole video's MSE and per chunk, SSIM averaged
over frames. Memory is what the store allocated (K/V rows x layers x branches), next
to what the full store allocates for the same video.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from motioncache_vllm.config import GenerationRequest
from motioncache_vllm.metrics import psnr_db, ssim
from motioncache_vllm.research.kv.policies import make_eviction_policy
from motioncache_vllm.research.kv.store import BudgetedKV
from motioncache_vllm.runtime.chunked import shared_adapter
from motioncache_vllm.runtime.request import GenerationResult, resolve
from motioncache_vllm.runtime.stepwise import StepwiseGeneration

BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.1)
VIDEO_POLICIES = ("window", "lru", "attention", "random", "motion", "merge")


@dataclass
class BudgetedRun:
    result: GenerationResult
    stores: dict[str, BudgetedKV]  # per CFG branch; empty for the runtime's default store

    @property
    def kv_bytes(self) -> int:
        return sum(s.nbytes for s in self.stores.values()) if self.stores else self.result.stats["kv_cache_bytes"]


def frames_for_chunks(pipe, chunks: int) -> int:
    """Pixel frames of a video of ``chunks`` AR chunks (4k+1 frames, whole causal blocks)."""
    return 4 * (chunks * pipe.causal_block_size - 1) + 1


@torch.inference_mode()
def generate_budgeted(
    pipe, request: GenerationRequest, policy: str | None, budget: float = 1.0, seed: int = 0, **policy_settings
) -> BudgetedRun:
    """Generate ``request`` with each CFG branch's context K/V held to ``budget`` by ``policy``
    (``None``: the runtime's own store, every finished frame kept)."""
    if policy is None:
        gen = StepwiseGeneration(pipe, request)
        stores: dict[str, BudgetedKV] = {}
    else:
        make_eviction_policy(policy, **policy_settings)  # a bad name fails before any work
        r = resolve(pipe, request)
        grid = (r.height // pipe.spatial_factor, r.width // pipe.spatial_factor)
        adapter = shared_adapter(pipe.transformer)
        stores = {}

        def factory(branch, geometry):
            cos, sin = adapter.rope_rows(0, geometry.tokens // geometry.tokens_per_frame, grid)
            store = BudgetedKV(
                geometry, make_eviction_policy(policy, **policy_settings), budget, rope=(cos[0], sin[0]), seed=seed
            )
            stores[branch] = store
            return store

        gen = StepwiseGeneration(pipe, request, kv_factory=factory)
    try:
        while not gen.done:
            gen.step()
    finally:
        gen.close()
    return BudgetedRun(gen.result(), stores)


def _finite(x: float) -> float:
    return 99.0 if x == float("inf") else round(x, 3)


def run_video_suite(
    pipe,
    prompts: list[str],
    chunks: int,
    steps: int,
    guidance: float | None,
    budgets=BUDGETS,
    policies=VIDEO_POLICIES,
    seed: int = 0,
    progress=None,
    done: list[dict] | None = None,
    cache: Path | None = None,
) -> list[dict]:
    """Every policy at every budget below 1 on every prompt, against the full-K/V video.

    ``done``: points of an earlier run of the same settings (``--resume``): kept and not
    rerun. ``cache``: a folder holding each prompt's full-K/V reference video, so a suite
    split into several invocations generates each reference once."""
    from motioncache_vllm.bench.suites import chunk_pixel_ranges

    frames = frames_for_chunks(pipe, chunks)
    ranges = chunk_pixel_ranges(frames, pipe.causal_block_size)
    points = list(done or [])
    have = {(p["prompt"], p["policy"], p["budget"]) for p in points}
    for i, prompt in enumerate(prompts):
        req = GenerationRequest(
            prompt=prompt, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, seed=seed + i
        )
        todo = [(b, n) for b in sorted(budgets) if b < 1.0 for n in policies if (prompt, n, b) not in have]
        if not todo and (prompt, "full", 1.0) in have:
            continue
        t0 = time.perf_counter()
        ref_frames, full_bytes = _reference(pipe, req, cache)
        ref_sha = hashlib.sha256(np.ascontiguousarray(ref_frames).tobytes()).hexdigest()[:16]
        if (prompt, "full", 1.0) not in have:
            points.append(
                {
                    "policy": "full",
                    "budget": 1.0,
                    "prompt": prompt,
                    "psnr_db": 99.0,
                    "ssim": 1.0,
                    "kv_bytes": full_bytes,
                    "kv_bytes_full": full_bytes,
                    "frames": frames,
                    "chunks": chunks,
                    "psnr_db_per_chunk": [99.0] * len(ranges),
                    "ref_sha256": ref_sha,
                    "wall_s": round(time.perf_counter() - t0, 2),
                }
            )
            if progress:
                progress(points[-1])
        # the tightest budgets first: the most telling points (100% is the reference
        # itself; tests: bit-identical for every policy)
        for budget, policy in todo:
            t0 = time.perf_counter()
            run = generate_budgeted(pipe, req, policy, budget, seed=seed)
            out = run.result.frames
            points.append(
                {
                    "policy": policy,
                    "budget": budget,
                    "prompt": prompt,
                    "psnr_db": _finite(psnr_db(out, ref_frames)),
                    "ssim": round(ssim(out, ref_frames), 5),
                    "kv_bytes": run.kv_bytes,
                    "kv_bytes_full": full_bytes,
                    "frames": frames,
                    "chunks": chunks,
                    "psnr_db_per_chunk": [_finite(psnr_db(out[a:b], ref_frames[a:b])) for a, b in ranges],
                    "bookkeeping_bytes": sum(s.bookkeeping_bytes for s in run.stores.values()),
                    "evicted_rows": sum(s.evicted for s in run.stores.values()),
                    "ref_sha256": ref_sha,  # which reference video the row was measured against
                    "wall_s": round(time.perf_counter() - t0, 2),
                }
            )
            if progress:
                progress(points[-1])
    return points


def _reference(pipe, req: GenerationRequest, cache: Path | None) -> tuple[np.ndarray, int]:
    """The full-K/V video of ``req`` and its K/V bytes, from ``cache`` when it holds it."""
    with torch.no_grad():
        weights = float(sum(p.double().sum() for p in pipe.transformer.parameters()))
    key = hashlib.sha256(json.dumps([str(pipe.config), repr(req), weights]).encode()).hexdigest()[:16]
    path = cache / f"kv_ref_{key}.npz" if cache is not None else None
    if path is not None and path.exists():
        saved = np.load(path)
        return saved["frames"], int(saved["kv_bytes"])
    ref = generate_budgeted(pipe, req, None)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, frames=ref.result.frames, kv_bytes=ref.kv_bytes)
    return ref.result.frames, ref.kv_bytes
