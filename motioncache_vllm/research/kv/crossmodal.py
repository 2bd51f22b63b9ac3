"""One K/V budget across modalities: video self-attention rows and text cross-attention rows.

Every transformer layer holds two K/V stores: the self-attention K/V of the finished
video frames (:class:`~.store.BudgetedKV`) and the cross-attention K/V of the prompt's
text rows (``max_sequence_length`` rows, padding included, projected from the prompt
embeddings). A row of either costs the same (``2 x heads x head_dim`` numbers per
layer). :class:`CrossModalKV` holds, at every commit, ``video rows + text rows <=
floor(budget x (committed video tokens + text rows))`` per layer, the same count in
every layer; the chunk being denoised is held whole, and so is the text during the first
chunk (nothing has scored it yet; the video's first chunk has no context either).

**Comparable scores.** Both attentions add their output to the same residual stream of
the same queries, so a row is scored by what its removal changes there. For one query
and one head, dropping row ``i`` (attention weight ``a_i``, value ``v_i``, output ``o``)
renormalises the rest: ``o' - o = a_i / (1 - a_i) (o - v_i)``, exactly. The score of a
row (``impact``) is ``a_i / (1 - a_i) |o - v_i|`` averaged over heads and queries and
over the calls it took part in (``|o - v_i|`` via ``|o|^2 - 2 o.v_i + |v_i|^2``, one
matmul). It ignores the output projections and the self-attention's gate (the same
linear map for every row of one attention, not the same across the two attentions).
The ``mass`` variant scores by the mean attention weight alone (the naive currency).

**Eviction.** Text rows are evicted for every layer at once (a text row's K/V in every
layer derive from that one prompt row, so the harness drops the row from the prompt
embeddings the transformer receives: exactly the eviction of its cross-attention K/V
everywhere); video rows per layer. With ``t`` text rows kept, each layer keeps its
``budget - t`` best video rows; ``impact``/``mass`` pick ``t`` maximising the total
score kept (text rows ranked by their score summed over layers). Baselines:
``proportional`` (each modality keeps the budget's share of its own rows),
``text-full`` (text never evicted, the video takes the rest), ``video-first`` (text
only gets what the video leaves). At least one text row is always kept (a softmax over
nothing is undefined).

**Sets** (mode ``sets``). The one-row score is blind to duplicates: the prompt's padding
rows are identical (zero embeddings through the text projection), each alone barely
matters, together they hold most of the cross-attention (an attention sink). ``sets``
scores a group of identical prompt rows as one: its weight ``A_S`` is the group's summed
weight, and ``A_S / (1 - A_S) |o - v|`` is exactly the change of removing the whole group.
When the budget first asks for an eviction, each group is merged into one row whose
cross-attention logit gets ``+log count`` (softmax over one row with that bias = over the
``count`` copies: lossless), which frees the copies' rows for the video; then it evicts
as ``impact`` does, a merged row counting as one row. The bias reaches the stock
cross-attention processor through its ``attention_mask`` argument (an additive mask),
set by a forward pre-hook of this module: no runtime change.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from motioncache_vllm.config import GenerationRequest
from motioncache_vllm.research.kv.policies import _top
from motioncache_vllm.research.kv.store import BudgetedKV
from motioncache_vllm.runtime.chunked import shared_adapter
from motioncache_vllm.runtime.request import GenerationResult, resolve
from motioncache_vllm.runtime.stepwise import StepwiseGeneration
from motioncache_vllm.runtime.stream import KVGeometry

MODES = ("impact", "mass", "proportional", "text-full", "video-first", "sets")


class _Shared:
    """The store's policy slot: the selection is :meth:`CrossModalKV.committed`'s own."""

    wants_attention = True
    needs_previous_frame = False
    merges = False


def _row_scores(weights: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(impact, mass) per row, mean over heads and queries, of one attention call.

    ``weights`` (heads, queries, rows) softmax weights; ``values`` (rows, heads, head_dim)."""
    w = weights.double()
    v = values.transpose(0, 1).double()  # (heads, rows, head_dim)
    o = w @ v  # (heads, queries, head_dim): the attention output
    dist2 = (o * o).sum(-1, keepdim=True) - 2.0 * (o @ v.transpose(-1, -2)) + (v * v).sum(-1).unsqueeze(1)
    impact = w / (1.0 - w).clamp(min=1e-6) * dist2.clamp(min=0.0).sqrt()
    return impact.mean((0, 1)), w.mean((0, 1))


class CrossModalKV(BudgetedKV):
    """Video context K/V and the text rows under one budget (see the module docstring)."""

    def __init__(
        self,
        geometry: KVGeometry,
        mode: str,
        budget: float,
        text_rows: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown cross-modal mode {mode!r}; valid: {', '.join(MODES)}")
        if text_rows < 1:
            raise ValueError(f"a cross-modal store needs at least one text row, got {text_rows}")
        super().__init__(geometry, _Shared(), budget, rope=rope, seed=seed, extra_rows=text_rows)
        self.mode, self.text_rows = mode, text_rows
        self.text_kept = torch.arange(text_rows)  # prompt rows still in cross-attention
        self.text_counts = torch.ones(text_rows, dtype=torch.float64)  # prompt rows each kept row stands for
        self.text_group = torch.arange(text_rows)  # per kept row: its group of identical prompt rows
        self.text_merged = False
        cap, layers = self.capacity, geometry.layers
        self._impact = [torch.zeros(cap, dtype=torch.float64) for _ in range(layers)]
        self._wmean = [torch.zeros(cap, dtype=torch.float64) for _ in range(layers)]
        self._seen = [torch.zeros(cap, dtype=torch.float64) for _ in range(layers)]
        self._t_impact = torch.zeros(layers, text_rows, dtype=torch.float64)
        self._t_wmean = torch.zeros(layers, text_rows, dtype=torch.float64)
        self._t_seen = torch.zeros(layers, text_rows, dtype=torch.float64)
        self.history: list[dict] = []  # per commit: the budget and what each modality kept
        self.peak_total_rows = text_rows

    # -- observation ---------------------------------------------------------------------
    def chunk_start(self, first_token: int) -> int:
        lo = super().chunk_start(first_token)
        for t in self._impact + self._wmean + self._seen:
            t[lo : lo + self.chunk_tokens] = 0.0
        return lo

    def observe_attention(self, layer: int, weights: torch.Tensor) -> None:
        super().observe_attention(layer, weights)
        rows = weights.shape[-1]
        impact, mass = _row_scores(weights[0], self._v[layer][0, :rows])
        self._impact[layer][:rows] += impact
        self._wmean[layer][:rows] += mass
        self._seen[layer][:rows] += 1.0

    def _row_state(self, layer: int) -> tuple[torch.Tensor, ...]:
        return (*super()._row_state(layer), self._impact[layer], self._wmean[layer], self._seen[layer])

    def set_text_rows(self, embeds: torch.Tensor) -> None:
        """The branch's prompt embedding rows ``(text rows, dim)``: ``sets`` groups identical ones."""
        if embeds.shape[0] != self.text_rows:
            raise ValueError(f"{embeds.shape[0]} prompt rows, the store holds {self.text_rows}")
        if self.mode == "sets":
            self.text_group = torch.unique(embeds.detach().float().cpu(), dim=0, return_inverse=True)[1]

    @property
    def text_bias(self) -> torch.Tensor | None:
        """The additive cross-attention logit bias ``(1, 1, 1, kept rows)`` (``None``: no merged row)."""
        return self.text_counts.log().float().view(1, 1, 1, -1) if self.text_merged else None

    def observe_text(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """One cross-attention call over the kept text rows: ``query`` (queries, heads, d),
        ``key``/``value`` (kept text rows, heads, d)."""
        q, k = query.transpose(0, 1), key.transpose(0, 1)
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        bias = self.text_bias
        weights = torch.softmax(logits if bias is None else logits + bias[0].to(logits.dtype), -1)
        if self.mode == "sets":  # a group of identical rows is scored as one row (its summed weight)
            group = torch.unique(self.text_group, return_inverse=True)[1]
            first = torch.full((int(group.max()) + 1,), group.numel()).scatter_reduce(
                0, group, torch.arange(group.numel()), "amin"
            )
            summed = torch.zeros(*weights.shape[:-1], first.numel(), dtype=weights.dtype)
            impact, mass = _row_scores(summed.index_add_(-1, group, weights), value[first])
            impact, mass = impact[group], mass[group]
        else:
            impact, mass = _row_scores(weights, value)
        n = self.text_kept.numel()
        self._t_impact[layer, :n] += impact
        self._t_wmean[layer, :n] += mass
        self._t_seen[layer, :n] += 1.0

    # -- the shared budget ---------------------------------------------------------------
    def _scores(self, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(layers, video rows) and (layers, text rows) scores in the mode's currency."""
        layers, n = self.geometry.layers, self.text_kept.numel()
        impact = self.mode != "mass"
        video = torch.stack(
            [
                (self._impact if impact else self._wmean)[i][:total] / self._seen[i][:total].clamp(min=1.0)
                for i in range(layers)
            ]
        )
        text = (self._t_impact if impact else self._t_wmean)[:, :n] / self._t_seen[:, :n].clamp(min=1.0)
        return video, text

    def _text_share(self, video: torch.Tensor, text: torch.Tensor, budget_rows: int) -> int:
        """How many text rows to keep (the rest of the budget goes to video rows, per layer)."""
        total, n = video.shape[1], text.shape[1]
        lo, hi = max(1, budget_rows - total), max(1, min(n, budget_rows))
        if self.mode == "text-full":
            return hi
        if self.mode == "video-first":
            return min(lo, hi)
        if self.mode == "proportional":
            return min(max(1, math.floor(self.budget * self.text_rows)), hi)
        # impact / mass: the t maximising the kept score, summed over layers and modalities
        video_sorted = torch.sort(video, dim=1, descending=True).values
        video_cum = torch.cat([torch.zeros(video.shape[0], 1, dtype=video.dtype), video_sorted.cumsum(1)], 1)
        text_sorted = torch.sort(text.sum(0), descending=True).values
        text_cum = torch.cat([torch.zeros(1, dtype=text.dtype), text_sorted.cumsum(0)])
        ts = torch.arange(lo, hi + 1)
        kept = video_cum[:, (budget_rows - ts).clamp(0, total)].sum(0) + text_cum[ts]
        return int(ts[int(torch.argmax(kept))])

    def committed(self, first_token: int, tokens: int) -> None:
        total = self.rows + tokens
        self.committed_tokens += tokens
        n = self.text_kept.numel()
        budget_rows = math.floor(self.budget * (self.committed_tokens + self.text_rows))
        if total + n > budget_rows and self.mode == "sets" and not self.text_merged:
            n = self._merge_identical_text()  # lossless: before anything is evicted
        keep_text, keep_video = n, total
        if total + n > budget_rows:
            video, text = self._scores(total)
            keep_text = self._text_share(video, text, budget_rows)
            keep_video = max(0, min(total, budget_rows - keep_text))
            if keep_text < n:
                j = _top(text.sum(0), keep_text)
                self.text_kept, self.text_counts, self.text_group = (
                    self.text_kept[j],
                    self.text_counts[j],
                    self.text_group[j],
                )
                for t in (self._t_impact, self._t_wmean, self._t_seen):
                    t[:, :keep_text] = t[:, j].clone()
                    t[:, keep_text:] = 0.0
            if keep_video < total:
                self.evicted += (total - keep_video) * self.geometry.layers
                for layer in range(self.geometry.layers):
                    self._keep_rows(layer, _top(video[layer], keep_video), keep_video)
        self.rows = keep_video
        self.peak_rows = max(self.peak_rows, keep_video)
        self.peak_total_rows = max(self.peak_total_rows, keep_video + keep_text)
        self.history.append(
            {"committed": self.committed_tokens, "budget_rows": budget_rows, "video": keep_video, "text": keep_text}
        )

    def _merge_identical_text(self) -> int:
        """``sets``: each group of identical kept text rows becomes its first row with the
        group's count (the ``+log count`` bias); returns the kept text rows."""
        group = self.text_group
        n = group.numel()
        first = torch.tensor([int(torch.nonzero(group == g)[0]) for g in dict.fromkeys(group.tolist())])
        if first.numel() == n:
            return n  # no duplicates: nothing merged, no bias
        self.text_merged = True
        counts = torch.zeros(self.text_rows, dtype=torch.float64).index_add_(0, group, self.text_counts)
        self.text_kept, self.text_counts, self.text_group = self.text_kept[first], counts[group[first]], group[first]
        for t in (self._t_impact, self._t_wmean, self._t_seen):
            t[:, : first.numel()] = t[:, first].clone()  # every row of a group carries the group's score
            t[:, first.numel() :] = 0.0
        return first.numel()

    @property
    def row_bytes(self) -> int:
        """One K/V row of one layer (keys and values)."""
        return 2 * self.geometry.heads * self.geometry.head_dim * self._k[0].element_size()

    @property
    def bookkeeping_bytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in self._impact + self._wmean + self._seen)
        extra += sum(t.numel() * t.element_size() for t in (self._t_impact, self._t_wmean, self._t_seen))
        return super().bookkeeping_bytes + extra


@dataclass
class CrossModalRun:
    result: GenerationResult
    stores: dict[str, CrossModalKV] = field(default_factory=dict)  # per CFG branch (empty: no eviction)
    text_rows: int = 0
    words: int = 0  # prompt rows that are words (and </s>); the rest is padding
    text_kept: dict[str, list[int]] = field(default_factory=dict)  # per branch, at the end
    layers: int = 0
    row_bytes: int = 0  # one K/V row of one layer (keys and values)


def _text_hooks(adapter):
    """Forward pre-hooks on every layer's cross-attention that hand a cross-modal store the
    cross-attention of its calls (recomputed for scoring only) and, once ``sets`` merged
    identical rows, pass its ``+log count`` bias as the stock processor's additive
    ``attention_mask`` (the only change to the model's output)."""

    def hook_for(layer: int):
        def pre(module, args):
            run = adapter.run
            # a store that observes attention runs alone in its transformer call (batch of one)
            store = run.executions[0].kv if run is not None and len(run.executions) == 1 else None
            if not isinstance(store, CrossModalKV):
                return
            hidden, enc = args[0], args[1]
            q = module.norm_q(module.to_q(hidden)).unflatten(2, (module.heads, -1))[0]
            k = module.norm_k(module.to_k(enc)).unflatten(2, (module.heads, -1))[0]
            v = module.to_v(enc).unflatten(2, (module.heads, -1))[0]
            store.observe_text(layer, q, k, v)
            bias = store.text_bias
            if bias is None:
                return None
            if bias.shape[-1] != enc.shape[1]:
                raise RuntimeError(f"text bias for {bias.shape[-1]} rows, cross-attention over {enc.shape[1]}")
            # attn2(hidden, encoder_hidden_states, attention_mask, rotary_emb): the mask is added to the logits
            return (hidden, enc, bias.to(hidden.dtype), *args[3:])

        return pre

    return [block.attn2.register_forward_pre_hook(hook_for(i)) for i, block in enumerate(adapter.layers)]


def prompt_words(pipe, prompt: str) -> int:
    """Rows of the prompt that carry tokens (words and ``</s>``); the rest is padding."""
    return len(pipe.tokenizer(prompt)["input_ids"])


@torch.inference_mode()
def generate_crossmodal(
    pipe, request: GenerationRequest, mode: str | None, budget: float = 1.0, seed: int = 0, drop_words: bool = False
) -> CrossModalRun:
    """Generate ``request`` with video and text K/V under one ``budget`` per CFG branch
    (``mode`` None: nothing evicted; ``drop_words``: the ablation that, after the first
    chunk, keeps only the conditional prompt's padding rows, everything else whole)."""
    r = resolve(pipe, request)
    text_rows = r.max_sequence_length
    words = min(prompt_words(pipe, r.prompt), text_rows)
    adapter = shared_adapter(pipe.transformer)
    stores: dict[str, CrossModalKV] = {}
    if mode is None:
        gen = StepwiseGeneration(pipe, request)
    else:
        if mode not in MODES:
            raise ValueError(f"unknown cross-modal mode {mode!r}; valid: {', '.join(MODES)}")
        grid = (r.height // pipe.spatial_factor, r.width // pipe.spatial_factor)

        def factory(branch, geometry):
            cos, sin = adapter.rope_rows(0, geometry.tokens // geometry.tokens_per_frame, grid)
            store = stores[branch] = CrossModalKV(geometry, mode, budget, text_rows, rope=(cos[0], sin[0]), seed=seed)
            return store

        gen = StepwiseGeneration(pipe, request, kv_factory=factory)
    full = dict(gen.run.prompt_embeds)
    if any(e.shape[1] != text_rows for e in full.values()):
        raise RuntimeError(f"prompt embeddings of {[e.shape[1] for e in full.values()]} rows, expected {text_rows}")
    for b, store in stores.items():
        store.set_text_rows(full[b][0])
    hooks = _text_hooks(adapter) if stores else []
    kept: dict[str, list[int]] = {b: list(range(text_rows)) for b in full}
    try:
        while not gen.done:
            if gen.step() != "commit" or gen.done:
                continue
            embeds = dict(gen.run.prompt_embeds)
            for b, store in stores.items():
                embeds[b] = full[b][:, store.text_kept]
                kept[b] = store.text_kept.tolist()
            if drop_words:
                kept["cond"] = list(range(words, text_rows))
                embeds["cond"] = full["cond"][:, words:]
            gen.run.prompt_embeds = embeds
    finally:
        for h in hooks:
            h.remove()
        gen.close()
    cfg = pipe.transformer.config
    row_bytes = 2 * cfg.num_attention_heads * cfg.attention_head_dim * pipe.transformer.dtype.itemsize
    return CrossModalRun(gen.result(), stores, text_rows, words, kept, cfg.num_layers, row_bytes)


def _check(frames, prompt: str) -> tuple[bool | None, bool | None]:
    """(colour, direction) agree with an "a C S moves D" caption; (None, None) for other captions."""
    from motioncache_vllm.data import tracker

    try:
        return tracker.check(frames, prompt)
    except ValueError:
        return None, None


def _point(name: str, budget: float, run: CrossModalRun, ref: CrossModalRun, prompt: str, ranges, t0: float) -> dict:
    """One suite point: ``run`` against the unbudgeted ``ref``; K/V bytes of both modalities
    (text rows counted in every layer of every CFG branch, as a cross-attention cache holds them)."""
    from motioncache_vllm.metrics import psnr_db, ssim
    from motioncache_vllm.research.kv.video import _finite

    out, want = run.result.frames, ref.result.frames
    colour, direction = _check(out, prompt)
    ref_colour, ref_direction = _check(want, prompt)
    row_bytes, layers = ref.row_bytes, ref.layers
    full_bytes = ref.result.stats["kv_cache_bytes"] + len(ref.text_kept) * ref.text_rows * layers * row_bytes
    video_bytes = sum(s.nbytes for s in run.stores.values()) or run.result.stats["kv_cache_bytes"]
    cond, kept = run.stores.get("cond"), run.text_kept.get("cond", [])
    return {
        "policy": name,
        "budget": budget,
        "prompt": prompt,
        "psnr_db": _finite(psnr_db(out, want)),
        "ssim": round(ssim(out, want), 5),
        "kv_bytes": video_bytes + sum(len(k) for k in run.text_kept.values()) * layers * row_bytes,
        "kv_bytes_full": full_bytes,
        "frames": int(out.shape[0]),
        "psnr_db_per_chunk": [_finite(psnr_db(out[a:b], want[a:b])) for a, b in ranges],
        "text_rows": run.text_rows,
        "words": run.words,
        "text_rows_kept": len(kept),
        "words_kept": sum(1 for j in kept if j < run.words),
        "colour_ok": colour,
        "direction_ok": direction,
        "ref_colour_ok": ref_colour,
        "ref_direction_ok": ref_direction,
        "history": cond.history if cond is not None else [],
        "ref_sha256": hashlib.sha256(np.ascontiguousarray(want).tobytes()).hexdigest()[:16],
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def run_crossmodal_suite(
    pipe,
    prompts: list[str],
    chunks: int,
    steps: int,
    guidance: float | None,
    budgets,
    modes=MODES,
    seed: int = 0,
    progress=None,
    done: list[dict] | None = None,
) -> list[dict]:
    """Every mode at every budget below 1 on every prompt, against the unbudgeted video; plus
    the ``words-dropped`` ablation (does the text still steer the video after chunk 0?).
    ``done``: points of an earlier run of the same settings (``--resume``): kept, not rerun
    (the unbudgeted reference is generated again for a prompt with points still to run)."""
    from motioncache_vllm.bench.suites import chunk_pixel_ranges
    from motioncache_vllm.research.kv.video import frames_for_chunks

    frames = frames_for_chunks(pipe, chunks)
    ranges = chunk_pixel_ranges(frames, pipe.causal_block_size)
    points = list(done or [])
    have = {(p["prompt"], p["policy"], p["budget"]) for p in points}
    for i, prompt in enumerate(prompts):
        req = GenerationRequest(
            prompt=prompt, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance, seed=seed + i
        )
        # (point name, budget, mode, words dropped): the reference first
        runs = [("full", 1.0, None, False), ("words-dropped", 1.0, None, True)]
        runs += [(m, b, m, False) for b in sorted(b for b in budgets if b < 1.0) for m in modes]
        todo = [r for r in runs if (prompt, r[0], r[1]) not in have]
        if not todo:
            continue
        ref = None
        for name, budget, mode, drop in runs:
            if ref is not None and (prompt, name, budget) in have:
                continue
            t0 = time.perf_counter()
            run = generate_crossmodal(pipe, req, mode, budget, seed=seed, drop_words=drop)
            ref = ref or run
            if (prompt, name, budget) in have:
                continue  # the reference of a resumed prompt: its point is already there
            points.append({**_point(name, budget, run, ref, prompt, ranges, t0), "chunks": chunks})
            if progress:
                progress(points[-1])
    return points
