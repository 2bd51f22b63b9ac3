"""Make three videos at once on a running ``motioncache serve`` with the ``openai`` client, then extend one.

Start the server first (it prints one line when it is ready)::

    motioncache serve --port 8000                  # embedded model, cache policy motion
    motioncache serve --model /path/to/SkyReels-V2-DF-1.3B-540P-Diffusers --cache-pool-mib 2048

then::

    python examples/serve_and_request.py --url http://127.0.0.1:8000 --out videos/

This is OpenAI's Videos API (``client.videos``): create jobs, poll them, download the MP4s,
continue a finished video with ``extend``. Our settings ride in ``extra_body``. (For curl,
``POST /v1/videos/generations`` is the synchronous one-call form.)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

PROMPTS = [
    "a red circle moves right slowly",
    "a blue square bounces up",
    "camera pans left over a green triangle",
]
SERVE_COMMAND = "motioncache serve --port 8000"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help=f"server address, e.g. http://127.0.0.1:8000 (start one with: {SERVE_COMMAND})")
    parser.add_argument("--out", type=Path, default=Path("videos"), help="directory for the mp4 files")
    parser.add_argument("--seconds", default="1", help="length of each video (16 fps; 1 s = 17 frames)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--policy", default=None, help="per-request cache policy (default: the server's)")
    parser.add_argument("--api-key", default="unused", help="the server's --api-key, if it has one")
    args = parser.parse_args()
    if args.url is None:
        print(
            f"no --url given; start a server with\n    {SERVE_COMMAND}\nand run\n"
            f"    python {sys.argv[0]} --url http://127.0.0.1:8000",
            file=sys.stderr,
        )
        return 2
    import openai

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the client marks the Videos API deprecated
    client = openai.OpenAI(base_url=f"{args.url.rstrip('/')}/v1", api_key=args.api_key, max_retries=0)
    args.out.mkdir(parents=True, exist_ok=True)
    extra = {"num_inference_steps": args.steps, **({"cache": {"policy": args.policy}} if args.policy else {})}
    t0 = time.perf_counter()
    try:
        # three jobs queued at once; the engine interleaves their denoising steps
        jobs = [
            client.videos.create(prompt=p, seconds=args.seconds, extra_body={**extra, "seed": i})
            for i, p in enumerate(PROMPTS)
        ]
        videos = [client.videos.poll(job.id, poll_interval_ms=250) for job in jobs]
        for i, video in enumerate(videos):
            if video.status != "completed":
                print(f"error: {video.id} {video.status}: {video.error}", file=sys.stderr)
                return 1
            path = args.out / f"video_{i}.mp4"
            client.videos.download_content(video.id).write_to_file(path)
            m = video.model_extra["motioncache"]
            s = m["stats"]
            print(
                f"{path}: {video.prompt!r}, {m['num_frames']} frames {video.size}, policy {s['policy']}, "
                f"computed {s['token_steps_computed']}/{s['token_steps_total']} token-steps, "
                f"server {s['wall_s']:.2f}s"
            )
        print(f"3 videos in {time.perf_counter() - t0:.2f}s")
        # continue the first one by one more second from its stored state (openai 3.57's
        # extend() wants a file in `video`, so the id rides in extra_body)
        t1 = time.perf_counter()
        extended = client.videos.extend(
            prompt="it turns around and moves back",
            seconds="1",
            video=openai.omit,
            extra_body={"video": {"id": videos[0].id}},
        )
        extended = client.videos.poll(extended.id, poll_interval_ms=250)
        if extended.status != "completed":
            print(f"error: extension {extended.status}: {extended.error}", file=sys.stderr)
            return 1
        path = args.out / "video_0_extended.mp4"
        client.videos.download_content(extended.id).write_to_file(path)
        print(
            f"{path}: {extended.seconds} s in all, the first {videos[0].seconds} s unchanged, "
            f"in {time.perf_counter() - t1:.2f}s"
        )
    except openai.APIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
