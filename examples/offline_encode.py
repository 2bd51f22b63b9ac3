"""Generate videos offline with vLLM's ``LLM.encode`` (no HTTP server).

    python examples/offline_encode.py --out videos/ [--model embedded|/path/to/diffusers/folder]

The video model is an ordinary vLLM pooling model whose IO processor plugin
(``motioncache_video``) turns ``{"data": {...}}`` prompts into videos; one ``encode`` call
is one video request.
"""

from __future__ import annotations

import argparse
import base64
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", type=Path, default=Path("videos"))
    parser.add_argument("--policy", default="motion", help="engine-wide default cache policy")
    parser.add_argument("--pool-mib", type=float, default=64.0, help="activation pool budget")
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the token shim needs a few MiB
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: faster start-up
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM

    from motioncache_vllm.vllm_plugin import build_model_dir

    llm = LLM(
        model=str(build_model_dir(args.model)),
        runner="pooling",
        enforce_eager=True,
        dtype="float32",
        max_model_len=4096,
        max_num_seqs=2,
        additional_config={"cache_policy": args.policy, "cache_pool_mib": args.pool_mib},
    )
    args.out.mkdir(parents=True, exist_ok=True)
    requests = [
        {"prompt": "a red circle moves right slowly", "num_frames": 17, "num_inference_steps": 4, "seed": 0},
        # per-request cache override
        {
            "prompt": "a blue square bounces up",
            "num_frames": 17,
            "num_inference_steps": 4,
            "seed": 1,
            "cache": {"policy": "none"},
        },
    ]
    for i, data in enumerate(requests):
        t0 = time.perf_counter()
        [output] = llm.encode({"data": data}, pooling_task="plugin", use_tqdm=False)
        video = output.outputs  # the IO processor's answer: id, video (base64 mp4), stats, ...
        path = args.out / f"offline_{i}.mp4"
        path.write_bytes(base64.b64decode(video["video"]))
        s = video["stats"]
        print(
            f"{path}: {video['num_frames']} frames {video['height']}x{video['width']}, policy {s['policy']}, "
            f"computed {s['token_steps_computed']}/{s['token_steps_total']} token-steps "
            f"in {time.perf_counter() - t0:.2f}s"
        )


if __name__ == "__main__":
    main()
