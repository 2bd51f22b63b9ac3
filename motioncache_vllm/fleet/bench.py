"""``motioncache bench fleet``: the Ray fleet's throughput with 1 vs 2 engine workers, the
router's overhead per request, and the time to recover from a killed worker.

One Ray cluster holds both fleets, a 1-worker and a 2-worker one, each worker with one Ray
CPU and one torch thread (1 worker computes on one core, 2 workers on two); only one fleet
works at a time, the other's actors sleep. Requests go to ``Fleet.generate`` in this process
(no HTTP): what is timed is the router, Ray and the engines. Full compute (policy ``none``),
so every request does the same work, the same requests for both fleets.

Per fleet: warm-up requests; two requests one after another on the idle fleet
(``dispatch_s``: submit -> the worker's engine set the request up; ``overhead_s``: the
latency minus the generation's own wall time, i.e. router + Ray + engine scheduling + the
worker's mp4 encoding). Then ``rounds`` rounds of N requests at once on each fleet in turn
(1, 2, then 2, 1, ...: a slow spell of the machine hits both): videos/min per round, the
ratio of the medians. With 2 workers: one request whose worker is ``kill -9``-ed at its first
checkpoint (recovery time, latency against the same request without the fault, frames equal).

The machine's own ceiling, measured in the same run: the same N requests through the
runtime alone (``generate_video``, no Ray, no vLLM) in one process, then split over two
processes, one torch thread each: what two cores give this work here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path

import msgspec

from motioncache_vllm.bench.suites import SUITES, Suite

DEFAULTS = {
    False: {"frames": 17, "steps": 4, "repeats": 8},  # repeats = concurrent requests per round
    True: {"frames": 17, "steps": 2, "repeats": 4},
}
ROUNDS = {False: 3, True: 1}
TARGET = {"min_ratio": 1.8}
OBJECT_STORE_MIB = 256


def _bodies(settings, n: int, offset: int = 0) -> list[bytes]:
    from motioncache_vllm.vllm_plugin.messages import CacheOverrides, VideoRequest

    prompts = settings.prompts
    return [
        msgspec.json.encode(
            VideoRequest(
                prompt=prompts[(offset + i) % len(prompts)],
                num_frames=settings.frames,
                num_inference_steps=settings.steps,
                seed=settings.seed + offset + i,
                cache=CacheOverrides(policy="none"),
            )
        )
        for i in range(n)
    ]


async def _start(spec, workers: int):
    from motioncache_vllm.fleet.router import Fleet, FleetConfig

    fleet = Fleet(spec, FleetConfig(workers=workers, cpus_per_worker=1, max_attempts=2, session_budget_mib=0))
    t0 = time.perf_counter()
    await fleet.start()
    return fleet, time.perf_counter() - t0


async def _idle_row(fleet, settings, start_s: float) -> dict:
    """Warm-up, then the router's figures on the idle fleet."""
    workers = len(fleet.workers)
    await asyncio.gather(*(fleet.generate(b) for b in _bodies(settings, 2 * workers, 1000)))  # warm-up
    alone = [await fleet.generate(b) for b in _bodies(settings, 2, 2000)]
    fl = [a["stats"]["fleet"] for a in alone]
    return {
        "workers": workers,
        "torch_threads_per_worker": 1,
        "dispatch_ms": round(1000 * statistics.median(f["dispatch_s"] for f in fl), 2),
        "latency_s": round(statistics.median(f["latency_s"] for f in fl), 3),
        "generation_s": round(statistics.median(a["stats"]["wall_s"] for a in alone), 3),
        "overhead_s": round(statistics.median(f["latency_s"] - a["stats"]["wall_s"] for f, a in zip(fl, alone)), 3),
        "fleet_start_s": round(start_s, 1),
    }


async def _round(fleet, settings, r: int) -> tuple[float, list[int]]:
    """N requests at once: makespan (s) and the workers that served them."""
    n = settings.repeats
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(fleet.generate(b) for b in _bodies(settings, n, 100 * r)))
    return time.perf_counter() - t0, sorted({a["stats"]["fleet"]["worker"] for a in answers})


async def _measure(spec, settings, rounds: int) -> tuple[list[dict], dict]:
    (one, s1), (two, s2) = await asyncio.gather(_start(spec, 1), _start(spec, 2))
    try:
        rows = [await _idle_row(one, settings, s1), await _idle_row(two, settings, s2)]
        makespans: dict[int, list[float]] = {1: [], 2: []}
        for r in range(rounds):
            for fleet in (one, two) if r % 2 == 0 else (two, one):
                makespan, served = await _round(fleet, settings, r)
                makespans[len(fleet.workers)].append(makespan)
                rows[len(fleet.workers) - 1]["served_by"] = served
        n = settings.repeats
        for row in rows:
            spans = makespans[row["workers"]]
            row.update(
                requests=n,
                rounds=rounds,
                makespan_s=round(statistics.median(spans), 3),
                videos_per_min=round(60 * n / statistics.median(spans), 3),
                videos_per_min_rounds=[round(60 * n / m, 2) for m in spans],
            )
        recovery = await _recovery(two, settings)
        return rows, recovery
    finally:
        await asyncio.gather(one.stop(), two.stop())


def _ceiling_child(model: str, bodies: list[bytes], ready, go, out) -> None:
    import torch

    torch.set_num_threads(1)
    from motioncache_vllm.config import CacheConfig
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video
    from motioncache_vllm.vllm_plugin.messages import decode_request

    pipe = load_pipeline(model)
    requests = [decode_request(b).generation_request() for b in bodies]
    cache = CacheConfig.decode(policy="none")
    generate_video(pipe, requests[0], cache=cache)  # warm-up
    ready.put(True)
    go.wait()
    t0 = time.perf_counter()
    for request in requests:
        generate_video(pipe, request, cache=cache)
    out.put(time.perf_counter() - t0)


def _machine_ceiling(settings) -> dict:
    """The same N requests through the runtime alone: one process, then two (half each)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    bodies = _bodies(settings, settings.repeats)
    row = {}
    for procs in (1, 2):
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [bodies[i::procs] for i in range(procs)]
        children = [ctx.Process(target=_ceiling_child, args=(settings.model, b, ready, go, out)) for b in shares]
        for c in children:
            c.start()
        for _ in children:
            ready.get(timeout=600)
        t0 = time.perf_counter()
        go.set()
        for _ in children:
            out.get(timeout=1200)
        row[f"videos_per_min_{procs}_process{'es' * (procs > 1)}"] = round(
            60 * len(bodies) / (time.perf_counter() - t0), 3
        )
        for c in children:
            c.join()
    row["ratio"] = round(row["videos_per_min_2_processes"] / row["videos_per_min_1_process"], 3)
    return row


async def _recovery(fleet, settings) -> dict:
    [body] = _bodies(settings, 1, 3000)
    clean = await fleet.generate(body)
    killed = {}

    def kill_at_first_checkpoint(event) -> None:
        if not killed:
            pid = fleet.workers[event.worker_id].info.pid
            os.kill(pid, signal.SIGKILL)
            killed.update(worker=event.worker_id, pid=pid, chunk=event.chunk)

    faulted = await fleet.generate(body, on_progress=kill_at_first_checkpoint)
    f = faulted["stats"]["fleet"]
    return {
        "killed_at_chunk": killed.get("chunk"),
        "attempts": f["attempts"],
        "resumed_at_chunk": f["resumed_at_chunk"],
        "recovery_s": f["recovery_s"][0] if f["recovery_s"] else None,
        "latency_s": f["latency_s"],
        "clean_latency_s": clean["stats"]["fleet"]["latency_s"],
        "frames_equal": faulted["frames_sha256"] == clean["frames_sha256"],
    }


def run_fleet(pipe, settings, quick: bool, out_dir: Path, progress_bar=None) -> dict:
    """The suite (see module docstring); ``pipe`` gives the resolved defaults only."""
    import ray

    from motioncache_vllm.bench.common import machine_info
    from motioncache_vllm.fleet.messages import WorkerSpec
    from motioncache_vllm.fleet.server import engine_argv
    from motioncache_vllm.vllm_plugin import build_model_dir, launcher

    model_dir = str(build_model_dir(settings.model))
    argv = launcher.serve_argv(model_dir, host="127.0.0.1", port=1, served_model_name=settings.model, extra=[])
    env = {k: os.environ.get(k, v) for k, v in launcher.ENV_DEFAULTS.items()}
    spec = WorkerSpec(worker_id=0, model_dir=model_dir, engine_argv=engine_argv(argv), env=env)
    rounds = ROUNDS[quick]
    if progress_bar is not None:
        progress_bar.reset(total=2)  # the fleets, the runtime alone
    # 3 Ray CPUs: the 1-worker fleet's and the 2-worker fleet's; only one fleet works at a time
    ray.init(num_cpus=3, object_store_memory=OBJECT_STORE_MIB * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        rows, recovery = asyncio.run(_measure(spec, settings, rounds))
    finally:
        ray.shutdown()
    if progress_bar is not None:
        progress_bar.update(1)
    ceiling = _machine_ceiling(settings)
    if progress_bar is not None:
        progress_bar.update(1)
    ratio = rows[1]["videos_per_min"] / rows[0]["videos_per_min"]
    result = {
        "suite": "fleet",
        "rows": rows,
        "recovery": recovery,
        "scaling": {
            **TARGET,
            "ratio": round(ratio, 3),
            "met": ratio >= TARGET["min_ratio"],
            "round_ratios": [
                round(b / a, 3) for a, b in zip(rows[0]["videos_per_min_rounds"], rows[1]["videos_per_min_rounds"])
            ],
        },
        "machine_ceiling": ceiling,
        "settings": {
            "prompts": settings.prompts,
            "frames": settings.frames,
            "steps": settings.steps,
            "concurrent_requests": settings.repeats,
            "rounds": rounds,
            "policy": "none",
            "quick": quick,
            "cpu_count": os.cpu_count(),
            "engine": "vllm " + " ".join(spec.engine_argv),
        },
        "machine": machine_info(),
    }
    _plot(result, out_dir / "fleet.png")
    print(
        f"2 workers / 1 worker videos/min: {ratio:.2f}x (target >= {TARGET['min_ratio']}; "
        f"rounds {result['scaling']['round_ratios']}); the runtime alone, 2 processes / 1: {ceiling['ratio']:.2f}x"
    )
    print("recovery from a killed worker: " + ", ".join(f"{k} {v}" for k, v in result["recovery"].items()))
    return result


def _run(pipe, name: str, settings, quick: bool, out_dir: Path, progress_bar=None) -> dict:
    return run_fleet(pipe, settings, quick, out_dir, progress_bar)


# `motioncache bench fleet` (the registry is the bench layer's; this suite sits above it)
SUITES["fleet"] = Suite(_run, lambda quick: dict(DEFAULTS[quick]))


def _plot(result: dict, path: Path) -> None:
    from motioncache_vllm.bench.common import pyplot, save_figure

    plt = pyplot()
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ceiling = result["machine_ceiling"]
    labels = [f"{r['workers']} worker{'s' * (r['workers'] > 1)}" for r in rows] + [
        "runtime, 1 proc",
        "runtime, 2 procs",
    ]
    values = [r["videos_per_min"] for r in rows] + [
        ceiling["videos_per_min_1_process"],
        ceiling["videos_per_min_2_processes"],
    ]
    ax.bar(labels, values, color=["C0", "C0", "C7", "C7"])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("videos / min")
    ax.set_title(
        f"Ray fleet {result['scaling']['ratio']:.2f}x, runtime alone {ceiling['ratio']:.2f}x (1 thread each)",
        fontsize=9,
    )
    save_figure(fig, path)
