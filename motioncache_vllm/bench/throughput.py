"""``throughput`` suite: videos per minute and per-request latency through a real vLLM server.

One ``motioncache serve`` child process (vLLM's API server + engine-core process) serves
every measurement. Each request is the standard Videos API flow of the ``openai`` client
(create, poll, download the MP4), sent from a thread pool and timed by the client: HTTP,
engine, worker and the API process's mp4 encoding, i.e. what a user waits for. Every request names its cache policy in its ``cache`` field, so one engine serves both.

For each cache policy and each concurrency N, on the same N request bodies::

    sequential   request 1 ─▶ answer, request 2 ─▶ answer, ... request N ─▶ answer
    concurrent   requests 1..N sent at once                 ├── makespan ──┤

    ratio = sum of the sequential latencies / concurrent makespan
          = (N / makespan) / (N / sequential time)

i.e. aggregate work per second at N concurrent over the sequential rate of the same work
(bodies differ in prompt and seed, and a cache policy makes work depend on them, so both
sides run the same bodies). Each sequential run sits right before its concurrent run, so
drift on a shared machine hits both alike. Issue 15's target: ratio >= 1.3 at N = 8
(batched engine steps: concurrency adds throughput, not only latency).

Engines (one server each, in turn): ``default`` is ``motioncache serve`` with the CPU
worker's threads on every core (as it ships) and batched steps (``serve_batch_steps: true``,
opt-in since they cost bit-equality with the library path); outside
``--quick`` also ``baseline``, the engine before issue 15: vLLM's own CPU binding (one core
reserved for the API process: 1 worker thread) and one transformer call per unit and CFG
branch (``serve_batch_steps: false``). ``vs_baseline`` = the default engine's videos/min at
N = 8 over the baseline's at N = 8 (issue 15: >= 1.8).

Engine overhead: the latency of one request alone through vLLM (body 1 of every sequential
run, plus concurrency 1) against the same request through the library path that
``motioncache generate`` takes (``generate_video`` + mp4 encoding), same settings, same
seed, same cache config, with torch limited to the worker's thread count (vLLM's CPU
worker pins its torch threads; the worker reports the number in each answer's stats).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from motioncache_vllm.bench.common import BenchSettings, machine_info, pyplot, save_figure

POLICIES = ("none", "motion")
CONCURRENCY = (1, 2, 4, 8)
QUICK_CONCURRENCY = (1, 2)
TARGET = {"concurrency": 8, "min_ratio": 1.3}
"""Issue 15: at 8 concurrent requests, at least 1.3 x the sequential rate of the same engine."""
BASELINE_TARGET = {"concurrency": 8, "min_ratio": 1.8}
"""Issue 15: at 8 concurrent requests, at least 1.8 x the videos/min of the baseline engine."""


@dataclass(frozen=True)
class Engine:
    name: str
    description: str
    env: dict  # on top of the caller's environment
    args: tuple[str, ...] = ()


DEFAULT_ENGINE = Engine(
    "default",
    "worker threads on every core (motioncache serve's default), batched steps (serve_batch_steps: true)",
    {},
    ("--additional-config", '{"serve_batch_steps": true}'),
)
BASELINE_ENGINE = Engine(
    "baseline",
    "vLLM's CPU binding (1 core reserved: 1 worker thread), one call per unit and CFG branch",
    {"VLLM_CPU_OMP_THREADS_BIND": "auto", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"},
    ("--additional-config", '{"serve_batch_steps": false}'),
)
DEFAULTS = {
    # 17 frames = two AR chunks; the model's 30 steps, so that the motion policy skips work
    False: {"frames": 17, "steps": None, "repeats": 3},
    True: {"frames": 9, "steps": 4, "repeats": 1},
}
"""``--frames/--steps/--repeats`` defaults (by ``quick``); ``repeats`` = timed library runs."""
REQUEST_TIMEOUT_S = 900
WARMUP_SEED = 10_000
"""Seed of the untimed first request per policy (not one of the measured bodies)."""


@dataclass(frozen=True)
class Answer:
    latency_s: float
    stats: dict
    frames_sha256: str


def request_bodies(settings: BenchSettings, n: int, policy: str) -> list[dict]:
    """``n`` video requests: the prompts in turn, seeds ``seed + i``, the policy's defaults."""
    bodies = []
    for i in range(n):
        body = {
            "prompt": settings.prompts[i % len(settings.prompts)],
            "num_frames": settings.frames,
            "seed": settings.seed + i,
            "cache": {"policy": policy},
        }
        if settings.steps is not None:
            body["num_inference_steps"] = settings.steps
        bodies.append(body)
    return bodies


def timed_request(url: str, body: dict) -> Answer:
    """One video the way a user of the ``openai`` client makes it: create the job, poll it
    until completed, download the MP4; the latency covers all three. The client polls at its
    default pace, which follows the server's ``openai-poll-after-ms`` (half the job's estimated
    remaining time, 20 ms to 1 s: ``videos_api.poll_after_ms``); a fixed 50 ms from 8 clients
    kept the API process and the client busy on the cores the engine computes on."""
    import warnings

    import openai

    from motioncache_vllm.vllm_plugin.server_process import ServerError

    client = _client(url)
    extra = {k: v for k, v in body.items() if k != "prompt"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client marks the Videos API deprecated
        t0 = time.perf_counter()
        try:
            video = client.videos.poll(client.videos.create(prompt=body["prompt"], extra_body=extra).id)
            if video.status != "completed":
                raise ServerError(f"video {video.id} {video.status} for {body}: {video.error}")
            client.videos.download_content(video.id).read()
        except openai.APIError as exc:
            raise ServerError(f"{exc} for {body}") from None
        latency = time.perf_counter() - t0
        client.videos.delete(video.id)  # keep the server's content store flat over a long run
    extra = video.model_extra["motioncache"]
    return Answer(latency, extra["stats"], extra["frames_sha256"])


_CLIENTS: dict = {}


def _client(url: str):
    """One ``openai`` client per server (thread-safe; shared by the concurrent requests)."""
    if url not in _CLIENTS:
        import openai

        _CLIENTS[url] = openai.OpenAI(
            base_url=f"{url}/v1",
            api_key=os.environ.get("OPENAI_API_KEY", "unused"),
            max_retries=0,
            timeout=REQUEST_TIMEOUT_S,
        )
    return _CLIENTS[url]


def run_sequential(url: str, bodies: list[dict], progress: Callable[[], None]) -> list[Answer]:
    answers = []
    for body in bodies:
        answers.append(timed_request(url, body))
        progress()
    return answers


def run_concurrent(url: str, bodies: list[dict], progress: Callable[[], None]) -> tuple[list[Answer], float]:
    """All ``bodies`` in flight at once; their answers (in order) and the makespan."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(timed_request, url, body) for body in bodies]
        for future in as_completed(futures):
            future.result()  # the first failure ends the run
            progress()
        makespan = time.perf_counter() - t0
    return [f.result() for f in futures], makespan


def level_row(policy: str, n: int, sequential: list[Answer], concurrent: list[Answer], makespan: float) -> dict:
    sequential_s = sum(a.latency_s for a in sequential)
    latencies = [a.latency_s for a in concurrent]
    return {
        "policy": policy,
        "concurrency": n,
        "videos_per_min": round(60 * n / makespan, 3),
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_max_s": round(max(latencies), 3),
        "sequential_videos_per_min": round(60 * n / sequential_s, 3),
        "sequential_latency_median_s": round(statistics.median(a.latency_s for a in sequential), 3),
        "concurrent_over_sequential": round(sequential_s / makespan, 4),
        # the worker's transformer work alone (stats.engine_units_s; the concurrent requests share
        # their engine steps, so the longest-lived one's covers the run): what batching changed
        # in the compute, apart from the server's overhead around it
        "sequential_units_s": round(sum(a.stats["engine_units_s"] for a in sequential), 3),
        "concurrent_units_s": round(max(a.stats["engine_units_s"] for a in concurrent), 3),
        "units_ratio": round(
            sum(a.stats["engine_units_s"] for a in sequential) / max(a.stats["engine_units_s"] for a in concurrent), 4
        ),
        # unbatched interleaving changes no pixel; batched steps stack other requests' samples into
        # the matrix products (float reassociation: equal within tests/test_stepwise.py's tolerance)
        "same_frames": all(a.frames_sha256 == b.frames_sha256 for a, b in zip(sequential, concurrent)),
    }


def library_row(pipe, policy: str, body: dict, alone: list[Answer], threads: int, repeats: int) -> dict:
    """One request alone through vLLM vs the same request through ``motioncache generate``'s path."""
    import hashlib

    from motioncache_vllm.runtime.generate import generate_video
    from motioncache_vllm.video_io import write_video
    from motioncache_vllm.vllm_plugin.messages import decode_request
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    video_request = decode_request(body)  # as the server decodes it
    request = video_request.generation_request()
    cache = EngineCacheSettings().cache_config(video_request.cache)  # as the served engine (default flags)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    # write_video as the CLI calls it, not processor.encode_mp4: that would import vLLM here, and
    # imageio's gc.collect() on close then walks vLLM's objects too (vLLM's API server freezes them)
    with tempfile.TemporaryDirectory(prefix="motioncache-throughput-") as tmp:
        video = Path(tmp) / "video.mp4"
        try:
            # untimed: first-call costs (of the encoder too), as the server's warm-up request
            write_video(video, generate_video(pipe, request, cache=cache).frames)
            walls, generate_walls = [], []
            for _ in range(max(repeats, 1)):
                t0 = time.perf_counter()
                result = generate_video(pipe, request, cache=cache)
                generated = time.perf_counter()
                write_video(video, result.frames)  # `motioncache generate` writes the video too
                walls.append(time.perf_counter() - t0)
                generate_walls.append(generated - t0)
        finally:
            torch.set_num_threads(saved)
    vllm_s = statistics.median(a.latency_s for a in alone)
    library_s = statistics.median(walls)
    return {
        "policy": policy,
        "vllm_latency_s": round(vllm_s, 3),
        "vllm_worker_wall_s": round(statistics.median(a.stats["wall_s"] for a in alone), 3),
        "library_wall_s": round(library_s, 3),
        "library_generate_s": round(statistics.median(generate_walls), 3),
        "vllm_over_library": round(vllm_s / library_s, 4),
        # against generation alone: the library path's video writing is a cost of its own (see RESULTS.md)
        "vllm_over_generate": round(vllm_s / statistics.median(generate_walls), 4),
        "vllm_samples": len(alone),
        "library_samples": len(walls),
        "same_frames": hashlib.sha256(result.frames.tobytes()).hexdigest() == alone[0].frames_sha256,
    }


def run_throughput(
    pipe, settings: BenchSettings, quick: bool, out_dir: Path, progress_bar=None, policies: tuple[str, ...] = POLICIES
) -> dict:
    """The suite (see the module docstring); writes ``out_dir/throughput.png``, returns the result."""
    from motioncache_vllm.vllm_plugin.server_process import ServerProcess

    levels = QUICK_CONCURRENCY if quick else CONCURRENCY
    engines = (DEFAULT_ENGINE,) if quick else (DEFAULT_ENGINE, BASELINE_ENGINE)
    progress = progress_bar.update if progress_bar is not None else (lambda: None)
    if progress_bar is not None:
        progress_bar.reset(total=len(engines) * len(policies) * (1 + 2 * sum(levels)))
    server_args = ["--model", settings.model, "--cache-policy", "none", "--max-num-seqs", str(max(levels))]
    rows, alone, threads, shas = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="motioncache-throughput-") as tmp:
        for engine in engines:
            env = {**os.environ, **engine.env}
            log = Path(tmp) / f"server-{engine.name}.log"
            with ServerProcess.start([*server_args, *engine.args], log, env=env) as server:
                for policy in policies:
                    bodies = request_bodies(settings, max(levels), policy)
                    warmup = timed_request(server.url, {**bodies[0], "seed": WARMUP_SEED})  # first-request costs
                    progress()
                    threads[engine.name, policy] = warmup.stats.get("torch_threads")
                    if engine is DEFAULT_ENGINE:
                        alone[policy] = []
                    for n in levels:
                        sequential = run_sequential(server.url, bodies[:n], progress)
                        concurrent, makespan = run_concurrent(server.url, bodies[:n], progress)
                        rows.append({"engine": engine.name, **level_row(policy, n, sequential, concurrent, makespan)})
                        shas[engine.name, policy, n] = [a.frames_sha256 for a in sequential + concurrent]
                        if engine is DEFAULT_ENGINE:
                            alone[policy] += [sequential[0]] + (concurrent if n == 1 else [])
    # the library path runs after the server is gone: nothing else of ours on the cores
    worker_threads = next((t for (e, _), t in threads.items() if t and e == DEFAULT_ENGINE.name), 1)
    overhead = [
        library_row(
            pipe, policy, request_bodies(settings, 1, policy)[0], alone[policy], worker_threads, settings.repeats
        )
        for policy in policies
    ]
    at = {(r["engine"], r["policy"]): r for r in rows if r["concurrency"] == TARGET["concurrency"]}
    ratios = {p: r["concurrent_over_sequential"] for (e, p), r in at.items() if e == DEFAULT_ENGINE.name}
    vs_baseline = {
        p: round(r["videos_per_min"] / at["baseline", p]["videos_per_min"], 4)
        for (e, p), r in at.items()
        if e == DEFAULT_ENGINE.name and ("baseline", p) in at
    }
    # frames of the batched engine against the unbatched one (same bodies, same seeds): equal
    # within the runtime's batching tolerance (tests/test_stepwise.py), bit-equal only by luck
    frames_vs_baseline = None
    if len(engines) > 1:
        frames_vs_baseline = {
            p: all(shas[DEFAULT_ENGINE.name, p, n] == shas[BASELINE_ENGINE.name, p, n] for n in levels)
            for p in policies
        }
    result = {
        "suite": "throughput",
        "rows": rows,
        "overhead": overhead,
        "target": {
            **TARGET,
            "ratio": ratios or None,
            "met": all(v >= TARGET["min_ratio"] for v in ratios.values()) if ratios else None,
        },
        "vs_baseline": {
            **BASELINE_TARGET,
            "ratio": vs_baseline or None,
            "met": all(v >= BASELINE_TARGET["min_ratio"] for v in vs_baseline.values()) if vs_baseline else None,
            "identical_frames": frames_vs_baseline,
        },
        "engines": {e.name: {"description": e.description, "env": e.env, "args": list(e.args)} for e in engines},
        "worker_threads": {f"{e}/{p}": t for (e, p), t in threads.items()},
        "settings": {
            "prompts": settings.prompts,
            "frames": settings.frames,
            "steps": settings.steps or pipe.config.default_num_inference_steps,
            "height": pipe.config.default_height,
            "width": pipe.config.default_width,
            "guidance": pipe.config.default_guidance_scale,
            "seeds": [settings.seed + i for i in range(max(levels))],
            "policies": list(policies),
            "policy_config": "each policy's defaults",
            "concurrency": list(levels),
            "server": "motioncache serve " + " ".join(server_args),
            "torch_threads": worker_threads,  # the worker's (reported by it); the library path used the same
            "library_repeats": max(settings.repeats, 1),
            "quick": quick,
            "cpu_count": os.cpu_count(),
        },
        "machine": machine_info(),
    }
    plot_throughput(result, out_dir / "throughput.png")
    return result


def plot_throughput(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, (rate_ax, latency_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for i, policy in enumerate(result["settings"]["policies"]):
        rows = [r for r in result["rows"] if r["policy"] == policy]
        n = [r["concurrency"] for r in rows]
        colour = f"C{i}"
        rate_ax.plot(n, [r["videos_per_min"] for r in rows], "o-", color=colour, label=f"{policy}: concurrent")
        rate_ax.plot(
            n,
            [r["sequential_videos_per_min"] for r in rows],
            "x--",
            color=colour,
            label=f"{policy}: same requests, sequential",
        )
        latency_ax.plot(n, [r["latency_median_s"] for r in rows], "o-", color=colour, label=f"{policy}: median")
        latency_ax.plot(n, [r["latency_max_s"] for r in rows], "^:", color=colour, label=f"{policy}: max")
    s = result["settings"]
    for ax, label in ((rate_ax, "videos / min"), (latency_ax, "latency per request (s)")):
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(s["concurrency"], [str(c) for c in s["concurrency"]])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"throughput through vLLM: {s['frames']} frames, {s['steps']} steps, "
        f"{s['torch_threads']} torch thread(s) ({result['machine']['date']})"
    )
    save_figure(fig, path)
