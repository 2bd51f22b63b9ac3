"""What batching can give on this machine, without HTTP: the ceiling of issue 15's
concurrency targets. Run under the exclusive CPU lock:

    /work/wt/bin/cpu-exclusive python benchmarks/probes/batch_ceiling.py --out benchmarks/results/batch_ceiling.json

1. The raw transformer call of the served model on one chunk (the first call of a real
   17-frame request, captured, its inputs repeated along the batch): milliseconds per
   sample at batch 1, 2, 4, 8, 16, with 1 and 2 torch threads (median of ``--repeats``).
2. Eight 17-frame requests (policy none) through ``runtime.stepwise.step_together`` as the
   worker runs them: one request at a time (each unit's CFG branches in one call) with 1
   and 2 threads, and all eight advanced together (every running request's units in one
   call; ``serve_max_batch`` 4 and unlimited) with 2 threads. Seconds for all eight.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from motioncache_vllm.config import CacheConfig
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.request import GenerationRequest, make_pool
from motioncache_vllm.runtime.stepwise import StepwiseGeneration, step_together

PROMPTS = [
    "a red circle moves right",
    "a blue square bounces up",
    "a green ball falls",
    "a yellow star spins",
    "a white line slides left",
    "a purple dot grows",
    "an orange box shrinks",
    "a black ring drifts",
]


def generations(pipe, frames: int, steps: int) -> list[StepwiseGeneration]:
    """One request per prompt of :data:`PROMPTS` (seed i + 1), policy none, one shared pool."""
    cache = CacheConfig.decode(policy="none")
    pool = make_pool(pipe, cache.pool)
    return [
        StepwiseGeneration(
            pipe,
            GenerationRequest(prompt=p, num_frames=frames, seed=i + 1, num_inference_steps=steps),
            cache=cache,
            pool=pool,
            request_id=f"r{i}",
        )
        for i, p in enumerate(PROMPTS)
    ]


def first_call_inputs(pipe, frames: int, steps: int) -> dict:
    """Keyword inputs of the transformer's first call in a real request (batch = its CFG branches)."""
    seen: dict = {}

    def hook(module, args, kwargs):
        if not seen:
            seen.update(kwargs)

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        gen = generations(pipe, frames, steps)[0]
        gen.step()
        gen.close()
    finally:
        handle.remove()
    return seen


def per_sample_ms(pipe, inputs: dict, batch: int, repeats: int) -> float:
    """Median ms per sample of one stock transformer call on ``batch`` copies of one sample."""
    one = {k: (v[:1] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in inputs.items()}
    stacked = {
        k: (v.repeat(batch, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() > 0 else v)
        for k, v in one.items()
    }
    times = []
    with torch.inference_mode():
        pipe.transformer(**stacked)  # warm
        for _ in range(repeats):
            t0 = time.perf_counter()
            pipe.transformer(**stacked)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def eight_requests(pipe, mode: str, frames: int, steps: int) -> float:
    gens = generations(pipe, frames, steps)
    t0 = time.perf_counter()
    if mode == "one at a time":
        for g in gens:
            while not g.done:
                step_together([g])
    else:
        max_batch = int(mode.split()[-1]) if "max" in mode else None
        while not all(g.done for g in gens):
            step_together([g for g in gens if not g.done], max_batch)
    for g in gens:
        g.result()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    pipe = load_pipeline("embedded")
    inputs = first_call_inputs(pipe, a.frames, a.steps)
    result: dict = {"settings": vars(a), "call_ms_per_sample": {}, "eight_requests_s": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        result["call_ms_per_sample"][threads] = {
            b: round(per_sample_ms(pipe, inputs, b, a.repeats), 2) for b in (1, 2, 4, 8, 16)
        }
        print(threads, "threads, ms per sample by batch:", result["call_ms_per_sample"][threads], flush=True)
    for threads, mode in [
        (1, "one at a time"),
        (2, "one at a time"),
        (2, "all together, max 4"),
        (2, "all together"),
    ]:
        torch.set_num_threads(threads)
        eight_requests(pipe, mode, a.frames, 1)  # warm the shapes
        seconds = round(eight_requests(pipe, mode, a.frames, a.steps), 2)
        result["eight_requests_s"][f"{threads} threads, {mode}"] = seconds
        print(threads, "threads,", mode, seconds, "s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
