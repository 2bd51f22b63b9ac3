"""Context-K/V eviction policies: one class each, behind :class:`EvictionPolicy`.

At every commit the store hands a policy one layer's rows (:class:`ContextView`) and the
number to keep; the policy returns the sorted row indices that survive. A new policy is
one subclass registered in :data:`POLICIES`.

- ``full``: keeps everything (a budget below 1 is refused);
- ``window``: attention sinks (the video's first latent frame, at most a quarter of the
  budget) + the most recent rows, StreamingLLM-style;
- ``lru``: rows last "used" longest ago are evicted (used = got more than a uniform share
  of some call's attention, mean over heads and queries); ties: older first;
- ``attention``: H2O: heavy hitters by accumulated attention received, half the budget
  reserved for the most recent rows (the H2O paper's split);
- ``random``: a seeded uniform choice;
- ``motion``: temporal similarity: a row's score is how much its K/V differ from the same
  spatial position in the previous frame (relative L1 of RoPE-free keys and of values,
  the K/V analogue of MotionCache's motion weight); the least changed rows go first; the
  video's first frame is always kept (it is what static positions are redundant with);
- ``merge``: as ``motion``, but an evicted row is merged into the nearest kept row of the
  same spatial position in an earlier frame (else a later one): counts-weighted mean of
  values and of RoPE-free keys (re-rotated at the survivor's position), and the survivor's
  attention logit gets ``+log count`` (proportional attention), TempCache/ToMe-style.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from motioncache_vllm.models.wan_adapter import apply_rotary
from motioncache_vllm.research.kv.store import ContextView


class EvictionPolicy:
    name: ClassVar[str]
    wants_attention: ClassVar[bool] = False  # the store needs attention weights
    needs_previous_frame: ClassVar[bool] = False  # the store keeps the last committed frame's K/V
    merges: ClassVar[bool] = False  # select() may rewrite kept rows (merge) and their counts

    def observe(self, view: ContextView) -> None:
        """A commit without eviction: update per-row scores of the new rows if the policy keeps any."""

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        """Sorted indices of the ``keep`` rows of ``view`` that stay."""
        raise NotImplementedError


def _top(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores (ties: the later row wins), sorted."""
    # a stable descending sort keeps earlier rows first on ties: sort the reversed scores
    flipped = torch.argsort(score.flip(0).double(), descending=True, stable=True)[:keep]
    return torch.sort(score.numel() - 1 - flipped).values


class FullPolicy(EvictionPolicy):
    name = "full"

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        raise ValueError("policy 'full' keeps every row: use it with budget 1.0")


class WindowPolicy(EvictionPolicy):
    name = "window"

    def __init__(self, sink_frames: int = 1, max_sink_share: float = 0.25) -> None:
        self.sink_frames, self.max_sink_share = sink_frames, max_sink_share

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        rows = view.positions.numel()
        sinks = min(
            int((view.positions < self.sink_frames * view.tokens_per_frame).sum()), int(keep * self.max_sink_share)
        )
        recent = torch.arange(rows - (keep - sinks), rows)
        return torch.cat([torch.arange(sinks), recent])


class _Scored(EvictionPolicy):
    """Keep the ``recent_share`` most recent rows, then the highest scores among the rest."""

    recent_share: float = 0.0

    def scores(self, view: ContextView) -> torch.Tensor:
        raise NotImplementedError

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        rows = view.positions.numel()
        recent = min(int(keep * self.recent_share), keep)
        score = self.scores(view)[: rows - recent]
        older = _top(score, keep - recent)
        return torch.cat([older, torch.arange(rows - recent, rows)])


class LRUPolicy(_Scored):
    name = "lru"
    wants_attention = True

    def scores(self, view: ContextView) -> torch.Tensor:
        return view.last_used.double()


class AttentionPolicy(_Scored):
    name = "attention"
    wants_attention = True

    def __init__(self, recent_share: float = 0.5) -> None:
        self.recent_share = recent_share

    def scores(self, view: ContextView) -> torch.Tensor:
        return view.mass


class RandomPolicy(EvictionPolicy):
    name = "random"

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        rows = view.positions.numel()
        return torch.sort(torch.randperm(rows, generator=view.generator)[:keep]).values


def _unrotate(keys: torch.Tensor, positions: torch.Tensor, rope) -> torch.Tensor:
    """RoPE-free keys: the inverse rotation at each row's own position (None: as stored)."""
    if rope is None:
        return keys
    cos, sin = rope
    return apply_rotary(keys, cos[positions], -sin[positions])


def temporal_change(
    keys: torch.Tensor, values: torch.Tensor, prev_keys: torch.Tensor, prev_values: torch.Tensor
) -> torch.Tensor:
    """Per row: mean of the relative L1 change of RoPE-free keys and of values (over heads and
    channels) against the same spatial position one frame earlier (MotionCache's M_f on K/V)."""
    dk = (keys - prev_keys).abs().mean((-1, -2)) / (prev_keys.abs().mean((-1, -2)) + 1e-8)
    dv = (values - prev_values).abs().mean((-1, -2)) / (prev_values.abs().mean((-1, -2)) + 1e-8)
    return 0.5 * (dk + dv)


class MotionPolicy(_Scored):
    name = "motion"
    needs_previous_frame = True

    def __init__(self, recent_share: float = 0.0) -> None:
        self.recent_share = recent_share

    def observe(self, view: ContextView) -> None:
        """Score the new chunk's rows (once, at their commit, while their neighbours are there)."""
        tpf, lo = view.tokens_per_frame, view.new_from
        keys = _unrotate(view.keys[lo:], view.positions[lo:], view.rope)
        values = view.values[lo:]
        if view.previous_frame is not None:
            pk, pv = view.previous_frame
            pk = _unrotate(pk, view.positions[lo : lo + tpf] - tpf, view.rope)
            prev_k, prev_v = torch.cat([pk, keys[:-tpf]]), torch.cat([pv, values[:-tpf]])
        else:  # the video's first chunk: its first frame has no predecessor
            prev_k, prev_v = torch.cat([keys[:tpf], keys[:-tpf]]), torch.cat([values[:tpf], values[:-tpf]])
        score = temporal_change(keys, values, prev_k, prev_v)
        score[view.positions[lo:] < tpf] = float("inf")  # the first frame: what static positions repeat
        view.score[lo:] = score.float()

    def scores(self, view: ContextView) -> torch.Tensor:
        self.observe(view)
        return view.score


class MergePolicy(MotionPolicy):
    name = "merge"
    merges = True

    def select(self, view: ContextView, keep: int) -> torch.Tensor:
        kept = super().select(view, keep)
        rows = view.positions.numel()
        dropped = torch.ones(rows, dtype=torch.bool)
        dropped[kept] = False
        gone = torch.nonzero(dropped).flatten()
        if gone.numel() == 0 or kept.numel() == 0:
            return kept
        frames, spatial = view.frames, view.spatial
        span = int(frames.max()) + 2
        # nearest kept row at the same spatial position: earlier frame first, else later
        kept_key = spatial[kept] * span + frames[kept]
        order = torch.argsort(kept_key)
        kept_sorted, key_sorted = kept[order], kept_key[order]
        gone_key = spatial[gone] * span + frames[gone]
        at = torch.searchsorted(key_sorted, gone_key)
        before = (at - 1).clamp(min=0)
        after = at.clamp(max=kept.numel() - 1)
        use_before = (at > 0) & (spatial[kept_sorted[before]] == spatial[gone])
        use_after = ~use_before & (spatial[kept_sorted[after]] == spatial[gone])
        target = torch.where(use_before, kept_sorted[before], kept_sorted[after])
        ok = use_before | use_after
        gone, target = gone[ok], target[ok]
        if gone.numel() == 0:
            return kept
        c = view.counts.unsqueeze(-1).unsqueeze(-1)
        free_k = _unrotate(view.keys, view.positions, view.rope)
        sum_k, sum_v, sum_c = free_k * c, view.values * c, view.counts.clone()
        sum_k.index_add_(0, target, free_k[gone] * c[gone])
        sum_v.index_add_(0, target, view.values[gone] * c[gone])
        sum_c.index_add_(0, target, view.counts[gone])
        touched = torch.unique(target)
        cnt = sum_c[touched].unsqueeze(-1).unsqueeze(-1)
        merged_k = sum_k[touched] / cnt
        if view.rope is not None:
            cos, sin = view.rope
            merged_k = apply_rotary(merged_k, cos[view.positions[touched]], sin[view.positions[touched]])
        view.keys[touched] = merged_k
        view.values[touched] = sum_v[touched] / cnt
        view.counts[touched] = sum_c[touched]
        return kept


POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (FullPolicy, WindowPolicy, LRUPolicy, AttentionPolicy, RandomPolicy, MotionPolicy, MergePolicy)
}


def make_eviction_policy(name: str, **settings) -> EvictionPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown K/V eviction policy {name!r}; valid: {', '.join(POLICIES)}")
    return POLICIES[name](**settings)
