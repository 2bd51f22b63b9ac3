"""``motioncache bench fleet``: the Ray fleet's throughput with 1 vs 2 engine workers, the
router's overhead per request, and the time to recover from a killed worker.

Each fleet runs on a private local Ray cluster with one CPU per worker and one torch thread
per worker, so 1 worker uses one core and 2 workers two: the ratio is how well the fleet
scales with engines (target >= 1.8x on 2 cores). Requests go to ``Fleet.generate`` in this
process (no HTTP): what is timed is the router, Ray and the engines. Full compute (policy
``none``), so every request does the same work.

Per fleet: a warm-up request per worker; two requests one after another on the idle fleet
(``dispatch_s``: submit -> the worker's engine set the request up; ``overhead_s``: the
latency minus the generation's own wall time, i.e. router + Ray + engine scheduling + the
worker's mp4 encoding); then N requests at once (makespan -> videos/min). With 2 workers:
one request whose worker is ``kill -9``-ed at its first checkpoint (recovery time, latency
against the same request without the fault, frames equal).
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
    False: {"frames": 17, "steps": 4, "repeats": 8},  # repeats = concurrent requests per fleet
    True: {"frames": 17, "steps": 2, "repeats": 4},
}
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


async def _measure(spec, workers: int, settings, fault: bool) -> dict:
    from motioncache_vllm.fleet.router import Fleet, FleetConfig

    fleet = Fleet(spec, FleetConfig(workers=workers, cpus_per_worker=1, max_attempts=2, session_budget_mib=0))
    t0 = time.perf_counter()
    await fleet.start()
    start_s = time.perf_counter() - t0
    try:
        await asyncio.gather(*(fleet.generate(b) for b in _bodies(settings, workers, 1000)))  # warm-up
        alone = [await fleet.generate(b) for b in _bodies(settings, 2, 2000)]
        n = settings.repeats
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(fleet.generate(b) for b in _bodies(settings, n)))
        makespan = time.perf_counter() - t0
        fl = [a["stats"]["fleet"] for a in alone]
        row = {
            "workers": workers,
            "torch_threads_per_worker": 1,
            "requests": n,
            "makespan_s": round(makespan, 3),
            "videos_per_min": round(60 * n / makespan, 3),
            "served_by": sorted({a["stats"]["fleet"]["worker"] for a in answers}),
            "dispatch_ms": round(1000 * statistics.median(f["dispatch_s"] for f in fl), 2),
            "latency_s": round(statistics.median(f["latency_s"] for f in fl), 3),
            "generation_s": round(statistics.median(a["stats"]["wall_s"] for a in alone), 3),
            "overhead_s": round(statistics.median(f["latency_s"] - a["stats"]["wall_s"] for f, a in zip(fl, alone)), 3),
            "fleet_start_s": round(start_s, 1),
        }
        if fault:
            row["recovery"] = await _recovery(fleet, settings)
        return row
    finally:
        await fleet.stop()


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
    rows = []
    for workers in (1, 2):
        ray.init(
            num_cpus=workers,
            object_store_memory=OBJECT_STORE_MIB * 2**20,
            include_dashboard=False,
            logging_level="WARNING",
        )
        try:
            rows.append(asyncio.run(_measure(spec, workers, settings, fault=workers == 2)))
        finally:
            ray.shutdown()
        if progress_bar is not None:
            progress_bar.update(1)
    ratio = rows[1]["videos_per_min"] / rows[0]["videos_per_min"]
    result = {
        "suite": "fleet",
        "rows": [{k: v for k, v in r.items() if k != "recovery"} for r in rows],
        "recovery": rows[1]["recovery"],
        "scaling": {**TARGET, "ratio": round(ratio, 3), "met": ratio >= TARGET["min_ratio"]},
        "settings": {
            "prompts": settings.prompts,
            "frames": settings.frames,
            "steps": settings.steps,
            "concurrent_requests": settings.repeats,
            "policy": "none",
            "quick": quick,
            "cpu_count": os.cpu_count(),
            "engine": "vllm " + " ".join(spec.engine_argv),
        },
        "machine": machine_info(),
    }
    _plot(result, out_dir / "fleet.png")
    print(f"2 workers / 1 worker videos/min: {ratio:.2f}x (target >= {TARGET['min_ratio']})")
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
    ax.bar([f"{r['workers']} worker{'s' * (r['workers'] > 1)}" for r in rows], [r["videos_per_min"] for r in rows])
    ax.set_ylabel("videos / min")
    ax.set_title(f"Ray fleet, 1 torch thread per worker ({result['scaling']['ratio']:.2f}x)")
    save_figure(fig, path)
