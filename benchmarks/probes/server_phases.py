"""Where a served concurrent run's time goes (issue 15): one ``motioncache serve`` engine,
N requests one after another, then the same N at once (the bench's bodies and client), and
per request the worker's own split (``stats.engine_span_s`` / ``engine_step_s`` /
``engine_units_s``: first to last engine step, inside the steps, the transformer work) plus
the CPU seconds of every process of ours (psutil). Run under the exclusive CPU lock:

    /work/wt/bin/cpu-exclusive python benchmarks/probes/server_phases.py --out /tmp/sp.json
    ... --env '{"OMP_NUM_THREADS": "2"}'                       # unbound worker threads
    ... --config '{"serve_batch_steps": true, "serve_max_batch": 8}'
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import psutil

from motioncache_vllm.bench import throughput as tp
from motioncache_vllm.bench.common import BenchSettings
from motioncache_vllm.vllm_plugin.server_process import ServerProcess

PROMPTS = [
    "static scene",
    "a red circle moves right slowly",
    "a green square moves left quickly",
    "camera pans down over a blue triangle",
]


def cpu_seconds(server_pid: int) -> dict[str, float]:
    out = {"bench client": sum(psutil.Process().cpu_times()[:2])}
    server = psutil.Process(server_pid)
    for proc in [server, *server.children(recursive=True)]:
        try:
            out[f"{proc.pid} {' '.join(proc.cmdline()[:3])[-40:]}"] = sum(proc.cpu_times()[:2])
        except psutil.Error:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--config", default='{"serve_batch_steps": true}', help="--additional-config of the engine")
    parser.add_argument("--env", default="{}", help="environment of the server, on top of ours (JSON)")
    parser.add_argument("--out", default=None)
    a = parser.parse_args()
    settings = BenchSettings(prompts=PROMPTS, frames=17, steps=a.steps, repeats=1)
    result: dict = {"settings": vars(a)}
    args = [
        "--model",
        "embedded",
        "--cache-policy",
        "none",
        "--max-num-seqs",
        str(a.n),
        "--additional-config",
        a.config,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **json.loads(a.env)}
        with ServerProcess.start(args, Path(tmp) / "server.log", env=env) as server:
            bodies = tp.request_bodies(settings, a.n, "none")
            tp.timed_request(server.url, {**bodies[0], "seed": tp.WARMUP_SEED})
            for mode in ("sequential", "concurrent"):
                before = cpu_seconds(server.proc.pid)
                if mode == "sequential":
                    answers = tp.run_sequential(server.url, bodies, lambda: None)
                    makespan = sum(x.latency_s for x in answers)
                else:
                    answers, makespan = tp.run_concurrent(server.url, bodies, lambda: None)
                after = cpu_seconds(server.proc.pid)
                keys = ("wall_s", "engine_span_s", "engine_step_s", "engine_units_s", "torch_threads")
                result[mode] = {
                    "makespan_s": round(makespan, 3),
                    "videos_per_min": round(60 * a.n / makespan, 2),
                    "cpu_s": {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()},
                    "requests": [
                        {"latency_s": round(x.latency_s, 3), **{k: x.stats.get(k) for k in keys}} for x in answers
                    ],
                }
                print(mode, json.dumps(result[mode]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
