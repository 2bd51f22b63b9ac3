"""Probe (issue 10 done-when): motioncache_vllm.enable() on a tiny random *stock*
SkyReelsV2DiffusionForcingPipeline, called with the stock long-video signature (prompt
embeddings, base_num_frames / overlap_history / addnoise_condition, ar_step 2, causal
blocks of 2): wall-clock speedup and PSNR against the stock output of the same call, and
disable() restoring the stock output bit for bit. Timings: run under the exclusive CPU lock.

    flock -x /tmp/mc-cpu.lock python benchmarks/probes/stock_enable.py [--quick]
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

import motioncache_vllm
from motioncache_vllm.config import MotionConfig, NoneConfig
from motioncache_vllm.metrics import psnr_db


def tiny_stock_pipeline(layers=4, heads=4, head_dim=32, seed=0):
    """A random stock SkyReels-V2 DF pipeline (no tokenizer or text encoder: prompt embeddings)."""
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from motioncache_vllm.data.procedural import ClipGenerator
    from motioncache_vllm.models.latent import fit_linear_latent
    from motioncache_vllm.models.loading import build_pipeline

    torch.manual_seed(seed)
    vae = fit_linear_latent(np.stack([ClipGenerator(7, num_frames=9).clip(i).frames for i in range(8)]))
    ours = build_pipeline(
        vae,
        transformer_overrides=dict(
            num_layers=layers,
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            ffn_dim=4 * heads * head_dim,
            num_frame_per_block=2,
        ),
    )
    pipe = SkyReelsV2DiffusionForcingPipeline(
        tokenizer=None, text_encoder=None, transformer=ours.transformer, vae=ours.vae, scheduler=ours.scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_call_kwargs(pipe, frames=61, steps=10, size=128, seed=0):
    text_dim = pipe.transformer.config.text_dim
    g = torch.Generator().manual_seed(1234)
    embeds = torch.randn(1, 16, text_dim, generator=g)
    negative = torch.randn(1, 16, text_dim, generator=g)
    return dict(
        prompt=None,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        height=size,
        width=size,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=5.0,
        base_num_frames=29,
        overlap_history=5,
        addnoise_condition=20,
        ar_step=2,
        causal_block_size=2,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    )


def call(pipe, seed, **kw):
    torch.manual_seed(seed)  # the stock loop draws the prefix re-noising from the global RNG
    kwargs = stock_call_kwargs(pipe, seed=seed, **kw)
    t0 = time.perf_counter()
    frames = pipe(**kwargs).frames[0]
    return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = tiny_stock_pipeline()
    kw = dict(frames=29, steps=6, size=64) if args.quick else {}
    repeats = 1 if args.quick else args.repeats
    stock, _ = call(pipe, 0, **kw)  # warm-up, and the reference
    rows = {}
    for name, config in (("none", NoneConfig()), (f"motion {args.threshold}", MotionConfig(threshold=args.threshold))):
        walls, base = [], []
        for _ in range(repeats):  # interleaved: stock, then enabled
            _, wall = call(pipe, 0, **kw)
            base.append(wall)
            motioncache_vllm.enable(pipe, config)
            try:
                out, wall = call(pipe, 0, **kw)
                stats = pipe.motioncache_stats
            finally:
                motioncache_vllm.disable(pipe)
            walls.append(wall)
        rows[name] = dict(
            stock_wall_s=round(statistics.median(base), 3),
            enabled_wall_s=round(statistics.median(walls), 3),
            speedup=round(statistics.median(base) / statistics.median(walls), 3),
            psnr_db=round(min(psnr_db(out, stock), 99.0), 2),
            ideal_speedup=stats["ideal_speedup"],
            skipped_steps=stats["skipped_steps"],
            partial_steps=stats["partial_steps"],
            full_steps=stats["full_steps"],
        )
    after, _ = call(pipe, 0, **kw)
    result = {
        "rows": rows,
        "disable_bit_exact": bool(np.array_equal(after, stock)),
        "frames": stock.shape[0],
        "settings": {k: v for k, v in stock_call_kwargs(pipe, **kw).items() if isinstance(v, (int, float, str))},
        "torch_threads": torch.get_num_threads(),
    }
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
