"""Benchmark (benchmarks/RESULTS.md, serving API): extension vs the whole length, and streaming.

One real ``motioncache serve`` (embedded model, defaults), driven as a user drives it:

- extension: a 1 s video (17 frames) is made, then ``POST /v1/videos/extensions`` adds 1 s
  (-> 33 frames) from its stored state; against a 33-frame video made at once (same
  steps). Latency = create -> completed, polled every 20 ms, per request; the rounds
  alternate (whole, base, extension) so drift hits all alike. Also checked: the stitched
  video's first 17 frames equal the base video's (per-frame SHA-256 of the raw frames).
- streaming: a 33-frame request with ``"stream": true``; time from sending it to the first
  ``video.chunk`` event (the first 9 frames, raw) and to ``video.completed``.

Run it alone on the machine (timings)::

    flock -x /tmp/mc-cpu.lock python benchmarks/serving_api.py [--steps 10] [--rounds 3]

Writes benchmarks/results/serving_api.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "serving_api.json"


def completed(client, video, poll_s: float = 0.02):
    while video.status not in ("completed", "failed"):
        time.sleep(poll_s)
        video = client.videos.retrieve(video.id)
    if video.status != "completed":
        raise RuntimeError(f"{video.id}: {video.error}")
    return video


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stream_once(url: str, body: dict) -> dict:
    import httpx

    t0 = time.perf_counter()
    first = None
    kind = None
    chunks = 0
    with httpx.stream("POST", f"{url}/v1/videos", json={**body, "stream": True}, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "video.chunk":
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
            elif line.startswith("data: ") and kind in ("video.completed", "video.failed"):
                if kind == "video.failed":
                    raise RuntimeError(line)
                total = time.perf_counter() - t0
    return {
        "first_chunk_s": round(first, 3),
        "completed_s": round(total, 3),
        "chunks": chunks,
        "first_over_whole": round(first / total, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import openai

    from motioncache_vllm.vllm_plugin.server_process import ServerProcess

    log = Path(tempfile.mkdtemp(prefix="mc-bench-")) / "server.log"
    with ServerProcess.start([], log, ready_timeout_s=900) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=900)
        extra = {"num_inference_steps": args.steps}
        # warm-up (first-call costs of the engine and the encoder)
        completed(client, client.videos.create(prompt="warm up", seconds="1", extra_body={**extra, "seed": 99}))
        rows = []
        for i in range(args.rounds):
            seed = {"seed": i}
            whole_s, whole = timed(
                lambda: completed(
                    client,
                    client.videos.create(
                        prompt="a red circle moves right slowly", seconds="2", extra_body={**extra, **seed}
                    ),
                )
            )
            base_s, base = timed(
                lambda: completed(
                    client,
                    client.videos.create(
                        prompt="a red circle moves right slowly", seconds="1", extra_body={**extra, **seed}
                    ),
                )
            )
            ext_s, ext = timed(
                lambda: completed(
                    client,
                    client.videos.extend(
                        prompt="a red circle moves right slowly",
                        seconds="1",
                        video=openai.omit,
                        extra_body={"video": {"id": base.id}},
                    ),
                )
            )
            b, e = base.model_extra["motioncache"], ext.model_extra["motioncache"]
            rows.append(
                {
                    "whole_33_s": round(whole_s, 3),
                    "base_17_s": round(base_s, 3),
                    "extension_17_to_33_s": round(ext_s, 3),
                    "extension_over_whole": round(ext_s / whole_s, 4),
                    "first_frames_equal": e["frame_sha256"][:17] == b["frame_sha256"] and e["num_frames"] == 33,
                    "resumed_chunks": e["stats"].get("resumed_chunks", 0),
                }
            )
            print(rows[-1], flush=True)
        streams = []
        for i in range(args.rounds):
            streams.append(
                stream_once(
                    server.url,
                    {
                        "prompt": "a blue square bounces up",
                        "num_frames": 33,
                        "num_inference_steps": args.steps,
                        "seed": i,
                    },
                )
            )
            print(streams[-1], flush=True)
    summary = {
        "command": f"flock -x /tmp/mc-cpu.lock python benchmarks/serving_api.py --steps {args.steps} "
        f"--rounds {args.rounds}",
        "steps": args.steps,
        "extension": rows,
        "extension_over_whole_median": statistics.median(r["extension_over_whole"] for r in rows),
        "streaming_33_frames": streams,
        "first_chunk_over_whole_median": statistics.median(s["first_over_whole"] for s in streams),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nextension 17->33 frames / whole 33 at once: median {summary['extension_over_whole_median']:.3f}")
    print(f"streaming 33 frames, first chunk / whole: median {summary['first_chunk_over_whole_median']:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
