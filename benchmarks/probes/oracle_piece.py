"""Part of an oracle study (``bench/oracle.py``) in one short invocation, for a loaded
machine where the whole study of one prompt would hold the shared lock too long.

``python benchmarks/probes/oracle_piece.py MODEL CAPTION SEED FRAMES STEPS VARIANTS OUT.json``
with VARIANTS comma-separated ``step:TAU``, ``stale:TAU``, ``fresh:TAU`` (the oracles of
relative residual change), ``stepdt:TAU``, ``staledt:TAU``, ``freshdt:TAU`` (the output-error
oracles) or ``POLICY:TAU`` (a cache), each optionally followed by ``:KEY=VALUE`` settings
(e.g. ``magcache:0.5:max_skip_steps=8``, ``stepdt:0.02:warmup_steps=2``; a VALUE that is not
JSON is a string: ``steperror:0.1:schedule=magcache``). Every piece first runs the ``record`` pass (full compute: the
reference video, deterministic, so every piece has the same one; its proxy rows are kept
only with ``record`` in VARIANTS). Merge pieces with ``oracle_merge.py``."""

from __future__ import annotations

import json
import statistics
import sys


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word: a string setting


def main(model: str, caption: str, seed: str, frames: str, steps: str, variants: str, out: str) -> None:
    from motioncache_vllm.bench.motionmap import recompute_motion_spearman
    from motioncache_vllm.bench.oracle import OracleConfig, oracle_point, run_oracle
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    pipe = load_pipeline(model)
    req = GenerationRequest(prompt=caption, num_frames=int(frames), num_inference_steps=int(steps), seed=int(seed))
    ref, _, states = run_oracle(pipe, req, OracleConfig(mode="record"))
    wanted = variants.split(",")
    rows = [{"prompt": caption, **r} for st in states for r in st.records] if "record" in wanted else []
    points, errors = [], {"stale": [], "fresh": []}
    for item in wanted:
        if item == "record":
            continue
        kind, tau, *extra = item.split(":")
        settings = {k: _value(v) for k, v in (e.split("=") for e in extra)}
        dt = kind.endswith("dt")
        base = kind[:-2] if dt else kind
        criterion = {"criterion": "dt"} if dt else {}
        suffix = "-dt" if dt else ""
        if base == "step":
            config = OracleConfig(mode="step", threshold=float(tau), **criterion, **settings)
            res, _, _ = run_oracle(pipe, req, config)
            variant = f"oracle:step{suffix}"
        elif base in ("stale", "fresh"):
            config = OracleConfig(mode="block", threshold=float(tau), **criterion, **settings)
            res, runner, _ = run_oracle(pipe, req, config, base)
            errors[base] += runner.selected_errors
            variant = f"oracle:block{suffix}/{base}"
        else:
            res = generate_video(pipe, req, cache=CacheConfig.decode(kind, {"threshold": float(tau), **settings}))
            variant = kind
        point = {**oracle_point(caption, variant, float(tau), res, ref), "settings": settings}
        if getattr(res, "recompute_map", None) is not None:
            # does the recompute map follow motion? (median over chunks; 0.0 = flat everywhere)
            rho = recompute_motion_spearman(res.recompute_map, ref.frames, pipe.causal_block_size)
            point["map_spearman"] = rho["median"]
        points.append(point)
        print(points[-1], flush=True)
    result = {
        "suite": "oracle",
        "points": points,
        "proxy_rows": rows,
        "fresh_context_max_rel_error": max(errors["fresh"], default=None),
        "stale_context_median_rel_error": statistics.median(errors["stale"]) if errors["stale"] else None,
        "settings": {
            "model": model,
            "prompts": [caption],
            "frames": int(frames),
            "steps": int(steps),
            "seed": int(seed),
        },
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
