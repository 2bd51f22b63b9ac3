"""Send three video requests at once to a running ``motioncache serve`` and save the videos.

Start the server first (it prints one line when it is ready)::

    motioncache serve --port 8000                  # embedded model, cache policy motion
    motioncache serve --model /path/to/SkyReels-V2-DF-1.3B-540P-Diffusers --cache-pool-mib 2048

then::

    python examples/serve_and_request.py --url http://127.0.0.1:8000 --out videos/

Uses only the standard library. Each request is ``POST /v1/videos``; the same body as the
``data`` of ``POST /pooling {"model": ..., "data": {...}}`` works too.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "a red circle moves right slowly",
    "a blue square bounces up",
    "camera pans left over a green triangle",
]
SERVE_COMMAND = "motioncache serve --port 8000"


def request_video(url: str, body: dict, timeout: float = 600) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        f"{url.rstrip('/')}/v1/videos", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    t0 = time.perf_counter()
    try:
        with opener.open(req, timeout=timeout) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # 4xx/5xx: {"error": {"message": ...}}
        raise RuntimeError(f"HTTP {exc.code}: {json.loads(exc.read())['error']['message']}") from None
    answer["client_wall_s"] = time.perf_counter() - t0
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help=f"server address, e.g. http://127.0.0.1:8000 (start one with: {SERVE_COMMAND})")
    parser.add_argument("--out", type=Path, default=Path("videos"), help="directory for the mp4 files")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--policy", default=None, help="per-request cache policy (default: the server's)")
    args = parser.parse_args()
    if args.url is None:
        print(f"no --url given; start a server with\n    {SERVE_COMMAND}\nand run\n"
              f"    python {sys.argv[0]} --url http://127.0.0.1:8000", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    bodies = [
        {"prompt": p, "num_frames": args.frames, "num_inference_steps": args.steps, "seed": i,
         **({"cache": {"policy": args.policy}} if args.policy else {})}
        for i, p in enumerate(PROMPTS)
    ]
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:  # three requests in flight at once
            answers = list(pool.map(lambda b: request_video(args.url, b), bodies))
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for i, (body, answer) in enumerate(zip(bodies, answers)):
        path = args.out / f"video_{i}.mp4"
        path.write_bytes(base64.b64decode(answer["video"]))
        s = answer["stats"]
        print(f"{path}: {body['prompt']!r}, {answer['num_frames']} frames {answer['height']}x{answer['width']}, "
              f"policy {s['policy']}, computed {s['token_steps_computed']}/{s['token_steps_total']} token-steps, "
              f"server {s['wall_s']:.2f}s, client {answer['client_wall_s']:.2f}s")
    print(f"3 videos in {time.perf_counter() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
