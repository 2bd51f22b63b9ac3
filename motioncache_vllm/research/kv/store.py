"""A budgeted context K/V store for the chunked runtime: :class:`BudgetedKV`.

The runtime's :class:`~motioncache_vllm.runtime.chunked.StreamKV` keeps the K/V of every
finished frame. This store keeps at most ``floor(budget x committed context tokens)``
rows per layer (checked after every commit, so the share holds at every point of the
video, not only at its end) and allocates only that much: ``capacity = floor(budget x
(video tokens - one chunk)) + one chunk`` rows per layer, the chunk being denoised always
held whole. Rows are compacted in place after each commit; an
:class:`~motioncache_vllm.research.kv.policies.EvictionPolicy` picks, per layer, which
rows survive (the same count in every layer, so the active chunk starts at one row).

Bookkeeping per row (gathered with the rows): its video token position, the attention
mass it received and the last call in which it was "used" (received more than a uniform
share), for policies that ask for attention; a merge count (its attention logit gets
``+log count``, the proportional attention of token merging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from motioncache_vllm.runtime.stream import KVGeometry, StreamKV


@dataclass
class ContextView:
    """What a policy sees of one layer at a commit: rows ``[0, rows)``, in position order."""

    layer: int
    keys: torch.Tensor  # (rows, heads, head_dim), RoPE applied (as attention reads them)
    values: torch.Tensor
    positions: torch.Tensor  # (rows,) video token index
    tokens_per_frame: int
    new_from: int  # rows >= new_from are the chunk just committed
    mass: torch.Tensor  # (rows,) attention received, summed over queries, mean over heads
    last_used: torch.Tensor  # (rows,) call index of the last call giving it > uniform share
    counts: torch.Tensor  # (rows,) tokens merged into the row (1 = itself)
    score: torch.Tensor  # (rows,) a per-row score the policy may keep between commits
    previous_frame: tuple[torch.Tensor, torch.Tensor] | None  # K/V of the frame before the new chunk
    rope: tuple[torch.Tensor, torch.Tensor] | None  # (video tokens, 1, head_dim) cos/sin
    generator: torch.Generator

    @property
    def frames(self) -> torch.Tensor:
        return self.positions // self.tokens_per_frame

    @property
    def spatial(self) -> torch.Tensor:
        return self.positions % self.tokens_per_frame


class BudgetedKV(StreamKV):
    """Context K/V held to ``budget`` (a share of the full context) by ``policy``."""

    keeps_every_frame = False  # rows are compacted: no snapshots of such a generation

    def __init__(
        self,
        geometry: KVGeometry,
        policy,
        budget: float,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        seed: int = 0,
        extra_rows: int = 0,
    ) -> None:
        """``extra_rows``: rows of another modality sharing the budget (cross-modal store):
        the video may hold up to that many more rows when the other modality is evicted."""
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"the K/V budget is a share of the full context in (0, 1], got {budget}")
        g = self.geometry = geometry
        self.policy, self.budget, self.rope = policy, budget, rope
        self.chunk_tokens = g.tokens_per_frame * g.frames_per_chunk
        self.capacity = min(
            math.floor(budget * (g.tokens - self.chunk_tokens + extra_rows)) + self.chunk_tokens, g.tokens
        )
        super().__init__(g.layers, self.capacity, g.heads, g.head_dim)
        self.wants_attention = bool(policy.wants_attention)
        cap, layers = self.capacity, g.layers
        self._pos = [torch.zeros(cap, dtype=torch.long) for _ in range(layers)]
        self._mass = [torch.zeros(cap, dtype=torch.float64) for _ in range(layers)]
        self._used = [torch.zeros(cap, dtype=torch.long) for _ in range(layers)]
        self._counts = [torch.ones(cap, dtype=torch.float32) for _ in range(layers)]
        self._score = [torch.zeros(cap, dtype=torch.float32) for _ in range(layers)]
        self._prev: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self._merged = False
        self.rows = 0  # kept context rows (every layer)
        self.committed_tokens = 0
        self.calls = 0
        self.peak_rows = 0
        self.evicted = 0  # rows dropped (or merged away), summed over layers
        self.generator = torch.Generator().manual_seed(seed)

    # -- StreamKV hooks ------------------------------------------------------------------
    def chunk_start(self, first_token: int) -> int:
        if first_token != self.committed_tokens:
            raise RuntimeError(f"chunk at token {first_token} after {self.committed_tokens} committed tokens")
        lo, hi = self.rows, self.rows + self.chunk_tokens
        for layer in range(self.geometry.layers):
            self._pos[layer][lo:hi] = torch.arange(first_token, first_token + self.chunk_tokens)
            self._mass[layer][lo:hi] = 0.0
            self._used[layer][lo:hi] = self.calls
            self._counts[layer][lo:hi] = 1.0
            self._score[layer][lo:hi] = 0.0
        return lo

    def committed(self, first_token: int, tokens: int) -> None:
        total = self.rows + tokens
        self.committed_tokens += tokens
        keep = min(math.floor(self.budget * self.committed_tokens), total)
        g = self.geometry
        for layer in range(g.layers):
            k, v = self._k[layer][0], self._v[layer][0]
            view = ContextView(
                layer=layer,
                keys=k[:total],
                values=v[:total],
                positions=self._pos[layer][:total],
                tokens_per_frame=g.tokens_per_frame,
                new_from=self.rows,
                mass=self._mass[layer][:total],
                last_used=self._used[layer][:total],
                counts=self._counts[layer][:total],
                score=self._score[layer][:total],
                previous_frame=self._prev[layer],
                rope=self.rope,
                generator=self.generator,
            )
            if keep < total:
                idx = self.policy.select(view, keep)
                if idx.numel() != keep or (idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all())):
                    raise RuntimeError(f"{type(self.policy).__name__}.select must return {keep} sorted distinct rows")
                self.evicted += total - keep
                if self.policy.merges and not bool((view.counts == 1).all()):
                    self._merged = True
            else:
                self.policy.observe(view)  # scores of the new rows, kept for later commits
                idx = None
            if self.policy.needs_previous_frame:  # the last committed frame, before any eviction
                tpf = g.tokens_per_frame
                self._prev[layer] = (k[total - tpf : total].clone(), v[total - tpf : total].clone())
            if idx is not None:
                self._keep_rows(layer, idx, keep)
        self.rows = keep
        self.peak_rows = max(self.peak_rows, keep)

    def _row_state(self, layer: int) -> tuple[torch.Tensor, ...]:
        """The per-row bookkeeping of one layer, moved with its K/V rows on eviction."""
        return (self._pos[layer], self._mass[layer], self._used[layer], self._counts[layer], self._score[layer])

    def _keep_rows(self, layer: int, idx: torch.Tensor, keep: int) -> None:
        """Compact one layer to the rows ``idx`` (K/V and per-row state alike)."""
        for t in (self._k[layer], self._v[layer]):
            t[0, :keep] = t[0, idx]
        for t in self._row_state(layer):
            t[:keep] = t[idx]

    def attention_bias(self, layer: int) -> torch.Tensor | None:
        if not self._merged:
            return None  # exactly the unbiased path until something is merged
        return self._counts[layer].log().view(1, 1, 1, -1)

    def observe_attention(self, layer: int, weights: torch.Tensor) -> None:
        if layer == 0:
            self.calls += 1
        rows = weights.shape[-1]
        share = weights[0].mean(0)  # (queries, rows), mean over heads
        self._mass[layer][:rows] += share.sum(0).double()
        used = share.mean(0) > 1.0 / rows
        self._used[layer][:rows][used] = self.calls

    # -- accounting ----------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """K/V actually allocated (capacity rows per layer), without the bookkeeping."""
        return super().nbytes

    @property
    def bookkeeping_bytes(self) -> int:
        extra = sum(
            t.numel() * t.element_size() for t in self._pos + self._mass + self._used + self._counts + self._score
        )
        extra += sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in filter(None, self._prev))
        return extra
