"""Quality and recompute map of ``steperror`` variants, no timing (shared lock is enough): per
caption of each file (seed 0, as ``hybrid_pareto.py``'s one-caption-per-file wall runs), the
stock loop's frames as the reference, then each variant on the chunked runtime with both CFG
branches in one call. One JSON line per (caption, variant) on stdout: PSNR, per-chunk PSNR, ideal
speedup, full / partial / skipped stream-steps, the map's Spearman against the reference's pixel
motion. ``--worth`` adds, per variant with refreshes, its "extra" twin: the same refreshes run,
but their bookkeeping (the refreshed tokens' error and distance restart, their rate and
reference update) is dropped, so every full / skip decision is the whole-step rule's and the
refreshed residuals are the only difference from whole steps (what a refresh against stale K/V
is worth by itself; session 16).

    python benchmarks/probes/steperror_quality.py [--worth] 'JSON' FILE [FILE ...]

JSON = list of steperror configs, e.g. ``'[{"threshold": 0.03, "refresh_fraction": 0.0}]'``.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from motioncache_vllm.bench.motionmap import recompute_motion_spearman
from motioncache_vllm.bench.prompts import load_prompts
from motioncache_vllm.bench.suites import chunk_pixel_ranges
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.metrics import psnr_db
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.policies.steperror import StepErrorPolicy
from motioncache_vllm.runtime.generate import generate_video

FRAMES = 33


@contextmanager
def refreshes_without_bookkeeping():
    """While active, a partial step's ``on_computed`` does nothing: the policy decides as if the
    refresh had not run (a probe-only patch; the runtime still recomputes and stores the blocks)."""
    original = StepErrorPolicy.on_computed

    def on_computed(self, state, blocks):
        if blocks is not None and not bool(blocks.all()):
            return
        original(self, state, blocks)

    StepErrorPolicy.on_computed = on_computed
    try:
        yield
    finally:
        StepErrorPolicy.on_computed = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worth", action="store_true", help="also run each refreshing variant without its bookkeeping")
    parser.add_argument("variants", help="JSON list of steperror configs")
    parser.add_argument("files", nargs="+", help="caption files")
    args = parser.parse_args()
    try:  # every variant checked before the model loads: a mistake is one line, not a traceback
        configs = json.loads(args.variants)
        if not isinstance(configs, list) or not all(isinstance(cfg, dict) for cfg in configs):
            raise ValueError("expected a JSON list of steperror configs (objects)")
        caches = [CacheConfig.decode("steperror", cfg, cfg_batched=True) for cfg in configs]
    except ValueError as error:  # JSONDecodeError and the config's ConfigError are ValueErrors
        parser.error(f"variants: {error}")
    missing = [path for path in args.files if not Path(path).is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    try:
        captions = {path: load_prompts(path) for path in args.files}
    except ValueError as error:  # a file without captions
        parser.error(str(error))
    variants = [(cfg, cache, False) for cfg, cache in zip(configs, caches)]
    if args.worth:
        variants += [(cfg, cache, True) for cfg, cache, _ in variants if cfg.get("refresh_fraction", 0.0) > 0]
    pipe = load_pipeline("embedded")
    pipe.set_progress_bar_config(disable=True)
    ranges = chunk_pixel_ranges(FRAMES, pipe.causal_block_size)
    for path, prompts in captions.items():
        for prompt in prompts:
            req = GenerationRequest(prompt=prompt, num_frames=FRAMES, seed=0)
            ref = generate_video(pipe, req, runtime="vanilla").frames
            for cfg, cache, extra in variants:
                if extra:
                    with refreshes_without_bookkeeping():
                        r = generate_video(pipe, req, cache=cache)
                else:
                    r = generate_video(pipe, req, cache=cache)
                s = r.stats
                row = {
                    "set": path,
                    "prompt": prompt,
                    "cfg": cfg,
                    "extra": extra,
                    "psnr_db": round(psnr_db(r.frames, ref), 3),
                    "per_chunk": [round(psnr_db(r.frames[a:b], ref[a:b]), 2) for a, b in ranges],
                    "ideal_speedup": s.get("ideal_speedup"),
                    "steps": f"{s['full_steps']}/{s['partial_steps']}/{s['skipped_steps']}",
                    "map": recompute_motion_spearman(r.recompute_map, ref, pipe.causal_block_size)["median"],
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
