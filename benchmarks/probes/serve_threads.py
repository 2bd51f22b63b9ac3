"""Videos/min through ``motioncache serve`` with the CPU worker on one core (vLLM's default:
one core reserved for the API process) vs on every core (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``),
N concurrent requests on the synchronous route. Run under the exclusive CPU lock:

    flock -x /tmp/mc-cpu.lock python benchmarks/probes/serve_threads.py --n 4 --frames 17 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from motioncache_vllm.vllm_plugin.server_process import ServerProcess, post_json


def run(env_extra: dict, n: int, frames: int, steps: int) -> dict:
    env = {**os.environ, **env_extra}
    body = {"prompt": "a red circle moves right slowly", "num_frames": frames, "num_inference_steps": steps}
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess.start(
            ["--cache-policy", "none", "--max-num-seqs", str(n)], Path(tmp) / "log", env=env, ready_timeout_s=900
        ) as server,
    ):
        url = f"{server.url}/v1/videos/generations"
        status, warm = post_json(url, {**body, "seed": 99}, timeout=900)
        assert status == 200, warm
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(lambda i: post_json(url, {**body, "seed": i}, timeout=900), range(n)))
        makespan = time.perf_counter() - t0
        assert all(s == 200 for s, _ in answers), answers
        return {
            "env": env_extra,
            "n": n,
            "makespan_s": round(makespan, 2),
            "videos_per_min": round(60 * n / makespan, 2),
            "torch_threads": warm["stats"].get("torch_threads"),
            "same_frames_sha": [a["frames_sha256"][:12] for _, a in answers],
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=10)
    a = parser.parse_args()
    rows = [run({}, a.n, a.frames, a.steps), run({"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}, a.n, a.frames, a.steps)]
    print(json.dumps(rows, indent=1))
