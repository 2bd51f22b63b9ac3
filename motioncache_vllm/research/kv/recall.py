"""Associative recall for a tiny causal LM, and K/V presses on it (torch + transformers only,
so the separate kvpress environment imports this module too).

Task: ``BOS k1 v1 [f f f] k2 v2 [f f] ... | Q k_i -> v_i``. Keys are distinct within a
sequence, values random, so the answer is only in the context. Two variants:

- ``plain``: 16 pairs back to back (33 context tokens);
- ``runs``: 8 pairs, each followed by a run of one repeated filler token (48 filler
  tokens in all, 65 context tokens): the text analogue of static frames, where the
  temporal-similarity press is expected to help; ``plain`` is where it has no such edge.

A press keeps, per layer and head, a share of the context K/V (as kvpress does) after
the context's prefill; the question (``Q k_i``) then runs against the pruned cache at
its original positions, and the answer is the argmax over the value tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BOS, QUERY = 0, 1
N_KEYS, N_VALUES, N_FILLERS = 16, 16, 4
KEY0 = 2
VALUE0 = KEY0 + N_KEYS
FILLER0 = VALUE0 + N_VALUES
VOCAB = FILLER0 + N_FILLERS
VARIANTS = {"plain": (16, 0), "runs": (8, 48)}  # (pairs, filler tokens)
MODEL_CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": BOS,
    "eos_token_id": QUERY,
    "pad_token_id": BOS,
}


@dataclass
class Batch:
    context: torch.Tensor  # (B, N) up to the first query
    queries: torch.Tensor  # (B, Q, 2): Q k_i per query
    answers: torch.Tensor  # (B, Q) v_i


def make_batch(variant: str, batch: int, queries: int, generator: torch.Generator) -> Batch:
    pairs, fillers = VARIANTS[variant]
    keys = torch.stack([torch.randperm(N_KEYS, generator=generator)[:pairs] for _ in range(batch)]) + KEY0
    values = torch.randint(N_VALUES, (batch, pairs), generator=generator) + VALUE0
    rows = []
    for b in range(batch):
        # split the filler tokens into one run after each pair (a run may be empty)
        cuts = torch.sort(torch.randint(fillers + 1, (pairs - 1,), generator=generator)).values
        runs = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([fillers])]))
        filler = torch.randint(N_FILLERS, (pairs,), generator=generator) + FILLER0
        seq = [BOS]
        for i in range(pairs):
            seq += [int(keys[b, i]), int(values[b, i])] + [int(filler[i])] * int(runs[i])
        rows.append(seq)
    context = torch.tensor(rows)
    pick = torch.stack([torch.randperm(pairs, generator=generator)[:queries] for _ in range(batch)])
    q_keys = torch.gather(keys, 1, pick)
    qs = torch.stack([torch.full_like(q_keys, QUERY), q_keys], -1)
    return Batch(context, qs, torch.gather(values, 1, pick))


def build_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**MODEL_CONFIG, attn_implementation="eager"))


def train(steps: int = 2500, batch: int = 16, lr: float = 3e-3, seed: int = 0, log=print, time_limit_s: float = 1e9):
    """Train on both variants (8 queries per sequence, loss on the answers only)."""
    import time

    model = build_model(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    t0 = time.perf_counter()
    for step in range(steps):
        b = make_batch("plain" if step % 2 else "runs", batch, 8, gen)
        ids = torch.cat([b.context, torch.cat([b.queries, b.answers.unsqueeze(-1)], -1).flatten(1)], 1)
        logits = model(input_ids=ids).logits
        n = b.context.shape[1]
        at = n + 1 + 3 * torch.arange(b.answers.shape[1])  # the key of each query predicts its value
        loss = torch.nn.functional.cross_entropy(logits[:, at].flatten(0, 1), b.answers.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            acc = (logits[:, at].argmax(-1) == b.answers).float().mean().item()
            log(f"step {step}: loss {loss.item():.3f}, batch accuracy {acc:.2f} ({time.perf_counter() - t0:.0f} s)")
        if time.perf_counter() - t0 > time_limit_s:
            log(f"stopped at step {step}: time limit")
            break
    return model.eval()


# -- presses ---------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, -1)
    return torch.cat([-x2, x1], -1)


def rope_free_keys(keys: torch.Tensor, model) -> torch.Tensor:
    """Keys (B, H, N, D) with Llama's RoPE undone at positions 0..N-1."""
    n = keys.shape[2]
    pos = torch.arange(n).unsqueeze(0)
    cos, sin = model.model.rotary_emb(keys, pos)  # (1, N, D)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return keys * cos - rotate_half(keys) * sin


def temporal_scores(keys: torch.Tensor, values: torch.Tensor, free_keys: torch.Tensor | None = None) -> torch.Tensor:
    """The video ``motion`` score on text: per (head, token), the relative L1 change of the
    RoPE-free key and of the value against the previous token (the first token: +inf)."""
    k = keys if free_keys is None else free_keys
    dk = (k[..., 1:, :] - k[..., :-1, :]).abs().mean(-1) / (k[..., :-1, :].abs().mean(-1) + 1e-8)
    dv = (values[..., 1:, :] - values[..., :-1, :]).abs().mean(-1) / (values[..., :-1, :].abs().mean(-1) + 1e-8)
    score = 0.5 * (dk + dv)
    first = torch.full_like(score[..., :1], float("inf"))
    return torch.cat([first, score], -1)


def keep_indices(name: str, keys, values, attentions, keep: int, model, generator) -> torch.Tensor:
    """(B, H, keep) sorted token indices per head that the press ``name`` keeps."""
    b, h, n, _ = keys.shape
    recent_first = torch.arange(n, dtype=torch.float64).expand(b, h, n)
    if name == "window":  # StreamingLLM: 4 sinks + the most recent tokens
        sinks = min(4, keep // 2)
        idx = torch.cat([torch.arange(sinks), torch.arange(n - (keep - sinks), n)])
        return idx.expand(b, h, keep)
    if name == "random":
        score = torch.rand((b, h, n), generator=generator, dtype=torch.float64)
    elif name in ("h2o", "lru"):
        w = attentions  # (B, H, Nq, Nk), prefill
        if name == "h2o":
            score = w.sum(2).double()
        else:  # last query position giving the token more than a uniform share of its row
            causal_len = torch.arange(1, n + 1, dtype=w.dtype).view(1, 1, n, 1)
            used = w > 1.0 / causal_len
            qpos = torch.arange(n, dtype=torch.float64).view(1, 1, n, 1)
            score = torch.where(used, qpos, torch.full_like(qpos, -1.0)).amax(2)
            score = score + recent_first / (n + 1)  # ties: the later token
        if name == "h2o":  # H2O: half heavy hitters, half the most recent tokens
            recent = keep // 2
            score = score.clone()
            score[..., n - recent :] = float("inf")
    elif name == "temporal":
        score = temporal_scores(keys, values, rope_free_keys(keys, model)).double()
    else:
        raise ValueError(f"unknown press {name!r}")
    return torch.sort(score.topk(keep, -1).indices, -1).values


OWN_PRESSES = ("window", "h2o", "lru", "random", "temporal")


@torch.no_grad()
def answer_with_press(
    model, context: torch.Tensor, queries: torch.Tensor, press: str, kept: float, generator: torch.Generator
) -> torch.Tensor:
    """Predicted value per (sequence, query) with ``kept`` of the context K/V (per layer and head)."""

    n = context.shape[1]
    keep = max(1, math.floor(kept * n))
    out = model(input_ids=context, use_cache=True, output_attentions=press in ("h2o", "lru"))
    cache = out.past_key_values
    layers = []
    for layer in range(model.config.num_hidden_layers):
        k, v = cache.layers[layer].keys, cache.layers[layer].values
        if keep < n:
            att = out.attentions[layer] if out.attentions is not None else None
            idx = keep_indices(press, k, v, att, keep, model, generator).unsqueeze(-1)
            k = torch.gather(k, 2, idx.expand(-1, -1, -1, k.shape[-1]))
            v = torch.gather(v, 2, idx.expand(-1, -1, -1, v.shape[-1]))
        layers.append((k, v))
    return answer_from_cache(model, layers, n, queries)


def answer_from_cache(model, layers: list[tuple[torch.Tensor, torch.Tensor]], n: int, queries: torch.Tensor):
    """Run each query (Q k_i) at positions n, n+1 against a copy of the (pruned) cache."""
    from transformers import DynamicCache

    preds = []
    for j in range(queries.shape[1]):
        cache = DynamicCache()
        for layer, (k, v) in enumerate(layers):
            cache.update(k.clone(), v.clone(), layer)
        pos = torch.arange(n, n + 2).expand(queries.shape[0], 2)
        logits = model(input_ids=queries[:, j], past_key_values=cache, position_ids=pos, use_cache=True).logits
        preds.append(logits[:, -1, VALUE0 : VALUE0 + N_VALUES].argmax(-1) + VALUE0)
    return torch.stack(preds, 1)
