"""kvpress's presses on the recall model, run in the separate kvpress environment.

``python -m motioncache_vllm.research.kv.kvpress_bridge --model DIR --data FILE --out FILE
--kept 1.0,0.5`` with the kvpress environment's python (kvpress 0.5.5 + transformers
5.2; see benchmarks/KV_EVICTION.md). Imports only torch, transformers, kvpress and
:mod:`.recall`. Besides kvpress's own presses it runs ``kvpress:temporal``: our temporal
similarity score as a kvpress ``ScorerPress`` (RoPE undone with the layer's own cos/sin),
to check that the two harnesses agree on the same score.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch


def _presses():
    import kvpress as kp

    from motioncache_vllm.research.kv.recall import rotate_half, temporal_scores

    @dataclass
    class TemporalPress(kp.ScorerPress):
        def score(self, module, hidden_states, keys, values, attentions, kwargs):
            cos, sin = kwargs["position_embeddings"]
            free = keys * cos.unsqueeze(1) - rotate_half(keys) * sin.unsqueeze(1)
            return temporal_scores(keys, values, free)

    return {
        "streaming_llm": lambda r: kp.StreamingLLMPress(compression_ratio=r, n_sink=4),
        "snapkv": lambda r: kp.SnapKVPress(compression_ratio=r, window_size=8),
        "expected_attention": lambda r: kp.ExpectedAttentionPress(compression_ratio=r),
        "tova": lambda r: kp.TOVAPress(compression_ratio=r),
        "keydiff": lambda r: kp.KeyDiffPress(compression_ratio=r),
        "knorm": lambda r: kp.KnormPress(compression_ratio=r),
        "observed_attention": lambda r: kp.ObservedAttentionPress(compression_ratio=r),
        "random": lambda r: kp.RandomPress(compression_ratio=r, seed=0),
        "temporal": lambda r: TemporalPress(compression_ratio=r),
    }


@torch.no_grad()
def main() -> None:
    from transformers import DynamicCache, LlamaForCausalLM

    from motioncache_vllm.research.kv.recall import answer_from_cache

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--kept", default="0.75,0.5,0.25,0.1")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(args.model, attn_implementation="eager").eval()
    data = torch.load(args.data)
    points, errors = [], {}
    for name, make in _presses().items():
        for kept in (float(k) for k in args.kept.split(",")):
            if kept >= 1.0:
                continue
            for variant, b in data.items():
                context, queries, answers = b["context"], b["queries"], b["answers"]
                n = context.shape[1]
                correct = 0
                try:
                    for lo in range(0, context.shape[0], args.batch):
                        cache = DynamicCache()
                        with make(1.0 - kept)(model):
                            model(input_ids=context[lo : lo + args.batch], past_key_values=cache, use_cache=True)
                        layers = [(cache.layers[i].keys, cache.layers[i].values) for i in range(len(cache.layers))]
                        pred = answer_from_cache(model, layers, n, queries[lo : lo + args.batch])
                        correct += int((pred == answers[lo : lo + args.batch]).sum())
                except Exception as exc:  # noqa: BLE001 -- report which press could not run, keep the others
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    break
                kept_rows = layers[0][0].shape[2]
                acc = correct / answers.numel()
                points.append(
                    {
                        "policy": f"kvpress:{name}",
                        "budget": kept,
                        "variant": variant,
                        "accuracy": round(acc, 4),
                        "context_tokens": n,
                        "kept_tokens": kept_rows,
                        "answers": answers.numel(),
                    }
                )
                print(f"{variant:5s} kvpress:{name:18s} kept {kept:.2f} ({kept_rows}/{n} rows): accuracy {acc:.3f}")
            if name in errors:
                print(f"kvpress:{name} failed: {errors[name]}")
                break
    with open(args.out, "w") as f:
        json.dump(points + [{"policy": f"kvpress:{k}", "error": v} for k, v in errors.items()], f)


if __name__ == "__main__":
    main()
