"""The state of one denoising stream of the chunked runtime: a (request, chunk, CFG branch).

- :class:`StreamKV`: K/V of one (request, branch) for every latent frame (and the
  context-store hooks a budgeted store overrides), :class:`KVGeometry` its shape;
- :class:`CacheCounters`: what a request computed, skipped and how long each part took;
- :class:`ChunkStream`: one stream's step, as the adapter's ``StackExecution`` (policy
  decision, selective compute, residuals in the pool).

The runner that drives them is :mod:`.chunked`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.models.wan_adapter import TextKV
from motioncache_vllm.policies import CachePolicy, Decision, PolicyState, StepObservation


@dataclass(frozen=True)
class KVGeometry:
    """Shape of one (request, branch) K/V stream: what a context store is built from."""

    layers: int
    tokens: int  # every latent frame of the video
    heads: int
    head_dim: int
    tokens_per_frame: int
    frames_per_chunk: int


class StreamKV:
    """K/V of one (request, branch) for every latent frame, preallocated per layer.

    The context-store hooks (``chunk_start``, ``committed``, ``attention_bias``,
    ``wants_attention``/``observe_attention``) keep every finished frame; a store with a
    budget (e.g. ``motioncache_vllm.research.kv``) overrides them to evict context tokens.
    """

    wants_attention = False  # True: the attention calls its observe_attention with weights
    # False: the store evicts or compacts rows, so its rows are not the video's token
    # positions and a snapshot (which stores K/V by position) cannot describe it
    keeps_every_frame = True

    def __init__(self, layers: int, tokens: int, heads: int, head_dim: int, dtype=torch.float32) -> None:
        shape = (1, tokens, heads, head_dim)
        self._k = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self._v = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]

    @classmethod
    def for_geometry(cls, g: KVGeometry) -> StreamKV:
        return cls(g.layers, g.tokens, g.heads, g.head_dim)

    def keys(self, layer: int) -> torch.Tensor:
        return self._k[layer]

    def values(self, layer: int) -> torch.Tensor:
        return self._v[layer]

    def chunk_start(self, first_token: int) -> int:
        """Row where the chunk starting at video token ``first_token`` keeps its K/V; every
        row before it is context the chunk attends to."""
        return first_token

    def committed(self, first_token: int, tokens: int) -> None:
        """The chunk's final K/V (its commit pass) now sit at its rows: it is context from now on."""

    def attention_bias(self, layer: int) -> torch.Tensor | None:
        """Additive logit bias (1, 1, 1, rows) over the rows (e.g. log counts of merged tokens), or None."""
        return None

    def observe_attention(self, layer: int, weights: torch.Tensor) -> None:
        """Attention weights (1, heads, queries, rows) of one call, when ``wants_attention``."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)


@dataclass
class CacheCounters:
    token_steps_total: int = 0
    token_steps_computed: int = 0
    commit_tokens: int = 0  # token passes of commit calls (always computed, cached or not)
    full_steps: int = 0
    partial_steps: int = 0
    skipped_steps: int = 0
    forced_blocks: int = 0  # recomputed only because their cached residual (or the CFG partner's) was missing
    # scene-cut guard (runtime/chunked.py): each chunk's content change against the previous
    # chunk at its first step (chunk 0: none), the chunks found to be cuts, and those in the
    # band below the cut threshold (the milder action)
    chunk_changes: list = field(default_factory=list)
    cut_chunks: list = field(default_factory=list)
    cut_band_chunks: list = field(default_factory=list)
    recompute_map: list = field(default_factory=list)  # per chunk: (F, H, W) recompute counts
    # seconds: whole transformer calls of denoising steps; policy decisions and bookkeeping;
    # pool operations; assembling residuals (scatter); the skipped calls alone (what a call
    # costs with no block run: embeddings, output head, and the three above)
    timings: dict = field(
        default_factory=lambda: dict(step_s=0.0, policy_s=0.0, pool_s=0.0, scatter_s=0.0, skip_call_s=0.0)
    )


class ChunkStream:
    """One (request, chunk, branch) denoising stream: implements the adapter's StackExecution."""

    def __init__(
        self,
        owner: tuple,
        layout: ChunkLayout,
        policy: CachePolicy,
        state: PolicyState,
        pool: ActivationPool,
        kv: StreamKV,
        start: int,
        rope: tuple[torch.Tensor, torch.Tensor],
        counters: CacheCounters,
        recompute_counts: torch.Tensor,
        num_steps: int | None = None,
        sigmas: tuple[float, ...] | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        self.owner, self.layout, self.policy, self.state, self.pool = owner, layout, policy, state, pool
        self.kv, self.start, self.end, self.rope = kv, start, start + layout.num_tokens, rope
        self.counters, self.recompute_counts = counters, recompute_counts
        self.num_steps, self.sigmas, self.guidance_scale = num_steps, sigmas, guidance_scale
        self.previous_last_frame: torch.Tensor | None = None
        # the text's cross-attention K/V per layer: computed at the chunk's first call, then
        # reused by its steps and commit (the prompt embeddings are fixed); dropped with the stream
        self.text_kv = TextKV()
        self.full_every = 0  # scene-cut guard: every n-th step runs in full, whatever the policy decides
        # cfg_shared: the stream whose executed decision this one copies (cond for uncond),
        # and the reverse link; in a paired pool the follower stores both branches' blocks
        self.leader: ChunkStream | None = None
        self.follower: ChunkStream | None = None
        # the other CFG branch of the same (request, chunk): a pair reuses cached blocks only
        # when both branches had all of theirs at plan (see plan)
        self.cfg_partner: ChunkStream | None = None
        self.plan_complete: bool | None = None  # all this stream's blocks were present at this step's plan
        self.paired = pool.paired
        self.residual: torch.Tensor | None = None  # (N, C) residual of the last step
        self.reused: torch.Tensor | None = None  # paired leader: its residual as read, before correct_reused
        self.executed: torch.Tensor | None = None  # blocks computed at the last step (bool)
        self.commit = False
        self.last_input: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None
        self._blocks: torch.Tensor | None = None  # recomputed blocks (None = all)
        self._mode = "full"
        self._cached: torch.Tensor | None = None  # the pool's residual of a skip / partial step, read at plan
        # token index of each (block, slot-row): tokens of block b in frame-major order
        order = torch.argsort(layout.block_of_token, stable=True)
        self._block_tokens = order.view(layout.num_blocks, -1)

    # -- StackExecution --------------------------------------------------------------------
    def plan(self, hidden: torch.Tensor, temb: torch.Tensor):
        if hidden.shape[0] != 1:
            raise ValueError("the chunked runtime runs one video per stream (batch size 1)")
        self._hidden = hidden
        self.last_input = hidden
        if self.commit:
            self._mode, self._blocks = "full", None
            return None
        lay = self.layout
        obs = StepObservation(
            e0=temb,
            hidden=hidden[0].view(lay.frames, lay.tokens_per_frame, -1),
            previous_last_frame=self.previous_last_frame,
            num_steps=self.num_steps,
            sigmas=self.sigmas,
            guidance_scale=self.guidance_scale,
        )
        timings = self.counters.timings
        t0 = time.perf_counter()
        if self.leader is None:
            decision: Decision = self.policy.decide(self.state, obs)
        else:  # follow the leader's executed blocks, including those it was forced to recompute
            self.state.previous_e0 = obs.e0
            decision = Decision("partial", self.leader.executed)
        if self.full_every and self.state.step % self.full_every == 0:
            # the policy decided first (its bookkeeping goes on); on_computed tells it what ran
            decision = Decision.full()
        t1 = time.perf_counter()
        present = self.pool.present(self.owner, lay.num_blocks)
        self.plan_complete = bool(present.all())
        partner_complete = self._partner_complete()
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1
        if decision.mode == "full":
            wanted = torch.ones(lay.num_blocks, dtype=torch.bool)
        elif decision.mode == "skip":
            wanted = torch.zeros(lay.num_blocks, dtype=torch.bool)
        else:
            wanted = decision.blocks.clone()
        # a missing residual forces a recompute, and of the whole step: recomputing only the
        # missing blocks (sparse tokens against stale K/V of the rest) measured 21.7 dB against
        # full compute where the same run without misses gave 41.4 dB (17 frames, 10 steps,
        # threshold 0.5, pool at 89% of the need). The partner branch's misses force it too: a
        # fresh branch against a reused one makes the guidance (cond - uncond) wrong (one stacked
        # call, pool at 90% of the need: 19.7 dB where both-or-neither gives 95.3)
        forced = ~wanted if not partner_complete else ~present & ~wanted
        if bool(forced.any()):
            self.counters.forced_blocks += int(forced.sum())
            wanted[:] = True
        self.executed = wanted
        self.counters.token_steps_total += lay.num_tokens
        if bool(wanted.all()):
            self._mode, self._blocks = "full", None
            self.counters.full_steps += 1
            self.counters.token_steps_computed += lay.num_tokens
            self.recompute_counts += 1
            return None
        # the cached residual is read now, while the blocks are known present: in a batched call
        # every sample plans before any finishes, and another sample's write at its finish may
        # evict this one's blocks from a short pool (they would then read as zeros)
        t0 = time.perf_counter()
        section = None if not self.paired else (1 if self.leader is not None else 0)
        self._cached = self.pool.read(self.owner, torch.arange(lay.num_blocks), section)[0]
        timings["pool_s"] += time.perf_counter() - t0
        if not bool(wanted.any()):
            self._mode, self._blocks = "skip", None
            self.counters.skipped_steps += 1
            return False
        self._mode, self._blocks = "partial", wanted
        tokens = lay.tokens_of(wanted)
        self.counters.partial_steps += 1
        self.counters.token_steps_computed += len(tokens)
        self.recompute_counts[wanted] += 1
        return tokens

    def finish(self, hidden_out: torch.Tensor | None) -> torch.Tensor:
        h_in = self._hidden
        if self.commit:
            return hidden_out
        lay, timings = self.layout, self.counters.timings
        all_blocks = torch.arange(lay.num_blocks)
        if self._mode == "full":
            residual = self.residual = (hidden_out - h_in)[0]
            self.policy.observe_residual(self.state, residual)
            self._store(all_blocks, residual)
            t0 = time.perf_counter()
            self.policy.on_computed(self.state, None)
            timings["policy_s"] += time.perf_counter() - t0
            return hidden_out
        # (blocks, tokens/block, C), read at plan. Paired: the leader's half, or the follower's
        # difference from the leader's residual of this step
        cached, self._cached = self._cached, None
        t1 = time.perf_counter()
        residual = torch.empty_like(h_in[0])
        residual[self._block_tokens.flatten()] = cached.flatten(0, 1).to(residual.dtype)
        if self.paired and self.leader is not None:  # the follower's difference from the leader's
            residual += self.leader.reused
        self.reused = residual.clone() if self.paired and self.follower is not None else None
        self.policy.correct_reused(self.state, residual)  # e.g. extrapolate the reused values
        if self._mode == "partial":
            tokens = lay.tokens_of(self._blocks)
            residual[tokens] = (hidden_out - h_in[:, tokens])[0]
        self.residual = residual
        out = h_in + residual.unsqueeze(0)
        timings["scatter_s"] += time.perf_counter() - t1
        if self._mode == "partial":
            self._store(torch.nonzero(self._blocks).flatten(), residual)
            t0 = time.perf_counter()
            self.policy.observe_residual(self.state, residual)
            self.policy.on_computed(self.state, self._blocks)
            timings["policy_s"] += time.perf_counter() - t0
        return out

    def end_step(self) -> None:
        self.plan_complete = None
        timings = self.counters.timings
        t0 = time.perf_counter()
        self.policy.end_step(self.state)
        priorities = None
        if self.pool.evicts and not (self.paired and self.follower is not None):  # paired: the follower does it
            priorities = self.policy.steps_until_recompute((self.leader or self).state)
        t1 = time.perf_counter()
        if priorities is not None:
            self.pool.reprioritise(self.owner, priorities)
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1

    # -- helpers ---------------------------------------------------------------------------
    def _partner_complete(self) -> bool:
        """Whether the CFG partner has all its blocks: as it saw them at its plan of this step if
        it planned first (in separate calls its write may have filled them since), else as the
        pool has them now. So both branches judge the pair from the same pool state, in one
        stacked call or in two: a step where both reuse writes only blocks already present (no
        eviction), and a step after a miss is full for both whatever the writes evict."""
        partner = self.cfg_partner
        if partner is None or partner.owner == self.owner:  # one branch, or a paired pool's one slot
            return True
        if partner.plan_complete is not None:
            return partner.plan_complete
        return bool(self.pool.present(partner.owner, self.layout.num_blocks).all())

    def _store(self, blocks: torch.Tensor, residual: torch.Tensor) -> None:
        if self.paired and self.follower is not None:
            return  # the follower writes this step's pair (it runs after the leader)
        timings = self.counters.timings
        t0 = time.perf_counter()
        priorities = None
        if self.pool.evicts:
            priorities = self.policy.steps_until_recompute((self.leader or self).state)
        if priorities is None:
            priorities = torch.zeros(self.layout.num_blocks)
        t1 = time.perf_counter()
        values = residual[self._block_tokens[blocks]]  # (n, tokens/block, C)
        if self.paired:  # [leader's residual | this branch's difference from it] per block
            base = self.leader.residual[self._block_tokens[blocks]] if self.leader is not None else values
            values = torch.cat([base, values - base], 1)
        self.pool.write(self.owner, self.layout.num_blocks, blocks, values, priorities[blocks])
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1


def recompute_map_frames(counters: CacheCounters, layout_grid: tuple[int, int], tile: int) -> np.ndarray:
    """(latent frames, H, W) recompute counts per token position (block counts broadcast)."""
    h, w = layout_grid
    per_chunk = []
    for counts in counters.recompute_map:
        frames = counts.shape[0]
        bpr = -(-w // tile)
        grid = counts.view(frames, -1, bpr)
        per_chunk.append(grid.repeat_interleave(tile, 1).repeat_interleave(tile, 2)[:, :h, :w])
    return torch.cat(per_chunk).numpy()
