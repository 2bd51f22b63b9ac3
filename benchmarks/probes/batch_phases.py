"""Where a batched engine step's time goes (issue 15): the runtime's transformer call against
the stock call, per sample, by batch, broken down by phase. Run under the exclusive CPU lock:

    /work/wt/bin/cpu-exclusive python benchmarks/probes/batch_phases.py --out benchmarks/results/batch_phases.json

1. ``raw``: the stock transformer call (no hooks) on the first chunk of a real request,
   one sample repeated along the batch: ms per sample at batch 1..16 (as batch_ceiling.py).
2. ``runtime``: the runtime's call of one denoising unit (chunk 1, so every sample attends
   to a finished chunk's K/V), the CFG branches of 8 real requests stacked as
   ``step_together`` stacks them (``ChunkedRunner.call_batch``): ms per sample at batch
   2..16, with the blocks' modulation per token (as before) and shared (one row per sample,
   ``wan_adapter.SHARE_TOKEN_TEMB``); then the same calls timed by phase (perf_counter
   around each part; a phase's time includes the phases inside it).
3. ``eight_requests``: 8 requests (17 frames, ``--steps``) through ``step_together`` one at
   a time (each unit's two CFG branches in one call) and in calls of at most 4, 8, 16
   samples: seconds for the units, and the setup (prompt encoding, noise) and decode apart.
4. ``ops``: torch.profiler self CPU time per sample of the top operators of the runtime's
   call at batch 2 and 16 (profiler overhead included: shares, not timings).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import statistics
import time

import torch

from motioncache_vllm.models import wan_adapter
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime import stream as stream_mod
from motioncache_vllm.runtime.stepwise import step_together

# the requests, the stock call's timing and its inputs are batch_ceiling's (a sibling script)
from batch_ceiling import first_call_inputs, generations, per_sample_ms

PHASES: dict[str, float] = collections.defaultdict(float)


def timed(fn, label: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES[label] += time.perf_counter() - t0

    return wrapper


class UnitCalls:
    """The calls of one denoising unit of 8 requests at chunk 1, step 1, rerun at will (a
    unit's calls only rewrite the same K/V rows and pool blocks each time)."""

    def __init__(self, pipe, frames: int, steps: int) -> None:
        self.gens = generations(pipe, frames, steps)
        with torch.inference_mode():
            for g in self.gens:
                while g.position != (1, 1):
                    g.step()
            self.runs = [g.run for g in self.gens]
            self.calls = [c for run in self.runs for c in run.begin_unit()]  # cond, uncond of each
        self.runner = self.runs[0].runner

    def ms_per_sample(self, batch: int, repeats: int) -> float:
        calls = self.calls[:batch]
        times = []
        with torch.inference_mode():
            self.runner.call_batch(calls)
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.runner.call_batch(calls)
                times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times) / batch

    def close(self) -> None:
        for run in self.runs:
            run.abort_unit()
        for g in self.gens:
            g.close()


def install_phase_timers(pipe) -> None:
    proc = wan_adapter.CachedSelfAttnProcessor
    proc.__call__ = timed(proc.__call__, "self_attention (projections, rope, K/V, SDPA, out)")
    proc._attend_batch = timed(proc._attend_batch, "  K/V write + gather + SDPA (batched)")
    proc._attend = timed(proc._attend, "  K/V write + SDPA (one sample)")
    proc._write = timed(proc._write, "    K/V write")
    wan_adapter.apply_rotary = timed(wan_adapter.apply_rotary, "  rope")
    torch_sdpa = wan_adapter.F.scaled_dot_product_attention
    wan_adapter.F = type("F", (), {"scaled_dot_product_attention": staticmethod(timed(torch_sdpa, "    SDPA"))})
    for block in pipe.transformer.blocks:
        block.attn2.forward = timed(block.attn2.forward, "cross_attention")
        block.ffn.forward = timed(block.ffn.forward, "ffn")
        block.norm1.forward = timed(block.norm1.forward, "norms")
        block.norm2.forward = timed(block.norm2.forward, "norms")
        block.norm3.forward = timed(block.norm3.forward, "norms")
    for block in pipe.transformer.blocks:  # the hooked forward (diffusers binds the hook when installed)
        block.forward = timed(block.forward, "blocks (hooked: every layer)")
    wan_adapter._plan_groups = timed(wan_adapter._plan_groups, "  plan + groups (head block)")
    stream_mod.ChunkStream.plan = timed(stream_mod.ChunkStream.plan, "    policy plan")
    stream_mod.ChunkStream.finish = timed(stream_mod.ChunkStream.finish, "  finish (residual, pool; tail block)")
    tr = pipe.transformer
    tr.condition_embedder.forward = timed(tr.condition_embedder.forward, "timestep/text embedder")
    tr.patch_embedding.forward = timed(tr.patch_embedding.forward, "patch embedding")
    tr.rope.forward = timed(tr.rope.forward, "rope table (stock forward)")
    tr.proj_out.forward = timed(tr.proj_out.forward, "output head")
    tr.forward = timed(tr.forward, "transformer call")


def ops_per_sample(units: UnitCalls, batch: int, rows: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    calls = units.calls[:batch]
    with torch.inference_mode():
        units.runner.call_batch(calls)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                units.runner.call_batch(calls)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {
        e.key: {"self_ms_per_sample": round(e.self_cpu_time_total / 1000 / 3 / batch, 3), "calls": e.count // 3}
        for e in events[:rows]
    }


def eight_requests(pipe, frames: int, steps: int, max_batch: int | None) -> dict:
    t0 = time.perf_counter()
    gens = generations(pipe, frames, steps)
    t1 = time.perf_counter()
    if max_batch is None:
        for g in gens:
            while not g.done:
                step_together([g])
    else:
        while not all(g.done for g in gens):
            step_together([g for g in gens if not g.done], max_batch)
    t2 = time.perf_counter()
    for g in gens:
        g.result()
    t3 = time.perf_counter()
    return {"setup_s": round(t1 - t0, 3), "units_s": round(t2 - t1, 3), "decode_s": round(t3 - t2, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="raw,runtime,eight,phases,ops")
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    parts = set(a.parts.split(","))
    pipe = load_pipeline("embedded")
    result: dict = {"settings": vars(a), "torch_threads": torch.get_num_threads()}

    def show(key):
        print(key, json.dumps(result[key]), flush=True)

    if "raw" in parts:
        inputs = first_call_inputs(pipe, a.frames, 2)
        result["raw_ms_per_sample"] = {b: round(per_sample_ms(pipe, inputs, b, a.repeats), 2) for b in (1, 2, 4, 8, 16)}
        show("raw_ms_per_sample")
    units = UnitCalls(pipe, a.frames, a.steps)
    if "runtime" in parts:
        for shared in (False, True):
            wan_adapter.SHARE_TOKEN_TEMB = shared
            key = f"runtime_ms_per_sample (temb {'shared' if shared else 'per token'})"
            result[key] = {b: round(units.ms_per_sample(b, a.repeats), 2) for b in (2, 4, 8, 16)}
            show(key)
    if "eight" in parts:
        result["eight_requests"] = {}
        for shared in (False, True):
            wan_adapter.SHARE_TOKEN_TEMB = shared
            for max_batch in (None, 4, 8, 16):
                eight_requests(pipe, a.frames, 1, max_batch)  # warm the shapes
                key = f"{'one at a time' if max_batch is None else f'max {max_batch}'}, temb {'shared' if shared else 'per token'}"
                result["eight_requests"][key] = eight_requests(pipe, a.frames, a.steps, max_batch)
                print(key, result["eight_requests"][key], flush=True)
    wan_adapter.SHARE_TOKEN_TEMB = True
    if "ops" in parts:
        result["ops"] = {b: ops_per_sample(units, b, 16) for b in (2, 16)}
        show("ops")
    if "phases" in parts:
        install_phase_timers(pipe)
        result["phases_ms_per_sample"] = {}
        for batch in (2, 4, 16):
            for shared in (False, True):
                wan_adapter.SHARE_TOKEN_TEMB = shared
                PHASES.clear()
                units.ms_per_sample(batch, a.repeats)
                n = (a.repeats + 1) * batch
                key = f"batch {batch}, temb {'shared' if shared else 'per token'}"
                result["phases_ms_per_sample"][key] = {k: round(1000 * v / n, 2) for k, v in PHASES.items()}
                print(key, json.dumps(result["phases_ms_per_sample"][key], indent=1), flush=True)
    units.close()
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
