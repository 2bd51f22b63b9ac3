"""What a partial step costs at full size: the SkyReels-V2 DF 1.3B transformer (random
weights, built from its config; timings need no trained weights) on a GPU, bf16.

Measures, with CUDA events (3 warm-ups, then the median of ``--repeats`` calls):

- ``full_model``: one forward of the whole transformer over a 540P video of F latent
  frames (the stock loop's unit: a step is one such call per CFG branch);
- ``stack``: the 30-block stack over one chunk whose self-attention reads the K/V of a
  context of earlier frames, as the chunked runtime runs it: all chunk tokens
  (a computed step) or a share ``f`` of them (a partial step: queries, FFN and cross
  attention on the selected tokens only; their fresh K/V written into the chunk's K/V,
  the unselected tokens' K/V stale), through diffusers' own block code with a
  self-attention processor that does the K/V write and the attention over all keys.

``python gpu_partial_step.py --out result.json`` (``--tiny`` runs a small config on CPU
to check the script). Run by ``device_textured.sh``; not yet run on a GPU (session 11 was
lent none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import SkyReelsV2Transformer3DModel

from motioncache_vllm.models.wan_adapter import apply_rotary

DF_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
)
TINY = dict(DF_1_3B, num_attention_heads=2, attention_head_dim=24, ffn_dim=96, num_layers=2, text_dim=32, freq_dim=32)


class PartialSelfAttn:
    """Self-attention of the selected chunk tokens over [context K/V | chunk K/V]."""

    def __init__(self, keys, values, context, tokens, cos, sin):
        self.keys, self.values, self.context, self.tokens, self.cos, self.sin = keys, values, context, tokens, cos, sin

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        q, k = apply_rotary(q, self.cos, self.sin), apply_rotary(k, self.cos, self.sin)
        index = self.tokens + self.context
        self.keys.index_copy_(1, index, k)
        self.values.index_copy_(1, index, v)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), self.keys.transpose(1, 2), self.values.transpose(1, 2))
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2, 3).type_as(q)))


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()``."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--video-latent-frames", type=int, default=25, help="97 frames -> 25 latent frames")
    ap.add_argument("--chunk-latent-frames", type=int, default=5, help="17 frames per chunk -> 5 latent frames")
    ap.add_argument("--context-latent-frames", type=int, default=20)
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    config = TINY if args.tiny else DF_1_3B
    lat_h, lat_w = (8, 8) if args.tiny else (68, 120)  # 540P: 544 x 960 pixels / 8
    text_len = 8 if args.tiny else 512
    torch.manual_seed(0)
    with torch.device(device):
        model = SkyReelsV2Transformer3DModel(**config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    result: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "params": params}
    result["torch"] = torch.__version__
    text = torch.randn(1, text_len, config["text_dim"], device=device, dtype=dtype)
    print(f"{params / 1e9:.3f} B parameters on {result['device']}", flush=True)

    with torch.inference_mode():
        frames = 2 if args.tiny else args.video_latent_frames
        latents = torch.randn(1, 16, frames, lat_h, lat_w, device=device, dtype=dtype)
        t = torch.full((1,), 500.0, device=device)
        result["full_model_latent_frames"] = frames
        result["full_model_tokens"] = frames * lat_h * lat_w // 4
        result["full_model_ms"] = timed(
            lambda: model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False),
            max(3, args.repeats // 2),
            device,
        )
        print("full model", result["full_model_ms"], "ms", flush=True)

        # The block stack over one chunk with a context, as the chunked runtime runs it.
        chunk_f, ctx_f = (1, 1) if args.tiny else (args.chunk_latent_frames, args.context_latent_frames)
        per_frame = lat_h * lat_w // 4
        chunk, context = chunk_f * per_frame, ctx_f * per_frame
        dim = config["num_attention_heads"] * config["attention_head_dim"]
        heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
        grid = torch.randn(1, 16, ctx_f + chunk_f, lat_h, lat_w, device=device)
        cos_all, sin_all = model.rope(grid)
        cos_all, sin_all = cos_all[:, context:], sin_all[:, context:]
        temb = torch.randn(1, 6, dim, device=device, dtype=torch.float32)
        enc = model.condition_embedder.text_embedder(text)
        hidden = torch.randn(1, chunk, dim, device=device, dtype=dtype)
        keys = torch.randn(1, context + chunk, heads, head_dim, device=device, dtype=dtype)
        values = torch.randn_like(keys)
        originals = [b.attn1.processor for b in model.blocks]
        stack = []
        for share in (1.0, 0.5, 0.3, 0.2, 0.1, 0.05):
            n = max(1, round(share * chunk))
            tokens = torch.randperm(chunk, device=device)[:n].sort().values
            cos, sin = cos_all[:, tokens], sin_all[:, tokens]
            for b in model.blocks:
                b.attn1.processor = PartialSelfAttn(keys, values, context, tokens, cos, sin)
            x = hidden[:, tokens]

            def run_stack(x=x):
                h = x
                for b in model.blocks:
                    h = b(h, enc, temb, None, None)
                return h

            ms = timed(run_stack, args.repeats, device)
            stack.append({"share": share, "tokens": n, "ms": ms})
            print(f"stack share {share}: {n} tokens {ms:.2f} ms", flush=True)
        for b, p in zip(model.blocks, originals):
            b.attn1.processor = p
        full = stack[0]["ms"]
        for row in stack:
            row["cost_vs_full"] = row["ms"] / full
        result.update(
            chunk_tokens=chunk, context_tokens=context, chunk_latent_frames=chunk_f, context_latent_frames=ctx_f
        )
        result["stack"] = stack
        if device.type == "cuda":
            result["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
