"""Chunked autoregressive generation with a K/V cache of finished chunks and a block cache.

The stock pipeline, in pure AR mode, runs the whole window every step: finished chunks
(t = 0) and chunks not started yet (t = 999) are recomputed although, with block-causal
attention, the first cannot change and the second cannot influence the active chunk.
This runtime instead, per chunk and per CFG branch::

    for step in steps:                        # the active chunk only
        transformer(chunk latents)            # attends to [finished K/V | chunk K/V]
        (policy: full / skip / partial over spatial blocks; residuals in the pool)
    transformer(final chunk latents, t = 0)   # "commit": its K/V joins the prefix

and reproduces the stock pipeline's output (same noise, same schedule) up to float
reassociation (see tests/test_runtime.py for the measured tolerance).
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.models.wan_adapter import WanFamilyAdapter
from motioncache_vllm.policies import CachePolicy, Decision, PolicyState, StepObservation

BRANCHES = ("cond", "uncond")


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
    forced_blocks: int = 0  # recomputed only because their cached residual was missing
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
    ) -> None:
        self.owner, self.layout, self.policy, self.state, self.pool = owner, layout, policy, state, pool
        self.kv, self.start, self.end, self.rope = kv, start, start + layout.num_tokens, rope
        self.counters, self.recompute_counts = counters, recompute_counts
        self.num_steps = num_steps
        self.previous_last_frame: torch.Tensor | None = None
        # cfg_shared: the stream whose executed decision this one copies (cond for uncond),
        # and the reverse link; in a paired pool the follower stores both branches' blocks
        self.leader: ChunkStream | None = None
        self.follower: ChunkStream | None = None
        self.paired = pool.paired
        self.residual: torch.Tensor | None = None  # (N, C) residual of the last step
        self.executed: torch.Tensor | None = None  # blocks computed at the last step (bool)
        self.commit = False
        self.last_input: torch.Tensor | None = None
        self._hidden: torch.Tensor | None = None
        self._blocks: torch.Tensor | None = None  # recomputed blocks (None = all)
        self._mode = "full"
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
            e0=temb, hidden=hidden[0].view(lay.frames, lay.tokens_per_frame, -1),
            previous_last_frame=self.previous_last_frame, num_steps=self.num_steps,
        )
        timings = self.counters.timings
        t0 = time.perf_counter()
        if self.leader is None:
            decision: Decision = self.policy.decide(self.state, obs)
        else:  # follow the leader's executed blocks, including those it was forced to recompute
            self.state.previous_e0 = obs.e0
            decision = Decision("partial", self.leader.executed)
        t1 = time.perf_counter()
        present = self.pool.present(self.owner, lay.num_blocks)
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1
        if decision.mode == "full":
            wanted = torch.ones(lay.num_blocks, dtype=torch.bool)
        elif decision.mode == "skip":
            wanted = torch.zeros(lay.num_blocks, dtype=torch.bool)
        else:
            wanted = decision.blocks.clone()
        forced = ~present & ~wanted
        if bool(forced.any()):
            # a missing residual forces a recompute, and of the whole step: recomputing only
            # the missing blocks (sparse tokens against stale K/V of the rest) measured
            # 21.7 dB against full compute where the same run without misses gave 41.4 dB
            # (17 frames, 10 steps, threshold 0.5, pool at 89% of the need)
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
        t0 = time.perf_counter()
        # (blocks, tokens/block, C); all present here. Paired: the leader's half, or the
        # follower's difference from the leader's residual of this step
        section = None if not self.paired else (1 if self.leader is not None else 0)
        cached, _ = self.pool.read(self.owner, all_blocks, section)
        t1 = time.perf_counter()
        residual = torch.empty_like(h_in[0])
        residual[self._block_tokens.flatten()] = cached.flatten(0, 1).to(residual.dtype)
        if section == 1:
            residual += self.leader.residual
        if self._mode == "partial":
            tokens = lay.tokens_of(self._blocks)
            residual[tokens] = (hidden_out - h_in[:, tokens])[0]
        self.residual = residual
        out = h_in + residual.unsqueeze(0)
        timings["pool_s"] += t1 - t0
        timings["scatter_s"] += time.perf_counter() - t1
        if self._mode == "partial":
            self._store(torch.nonzero(self._blocks).flatten(), residual)
            t0 = time.perf_counter()
            self.policy.on_computed(self.state, self._blocks)
            timings["policy_s"] += time.perf_counter() - t0
        return out

    def end_step(self) -> None:
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


@dataclass
class ChunkedResult:
    latents: torch.Tensor
    counters: CacheCounters
    wall_s: float
    kv_bytes: int


_SHARED_ADAPTERS: "weakref.WeakKeyDictionary[torch.nn.Module, WanFamilyAdapter]" = weakref.WeakKeyDictionary()


def shared_adapter(transformer: torch.nn.Module) -> WanFamilyAdapter:
    """The one adapter of ``transformer``: every runner (and every live, possibly
    interleaved, generation) on a pipeline uses it; its install is reference counted."""
    adapter = _SHARED_ADAPTERS.get(transformer)
    if adapter is None:
        adapter = _SHARED_ADAPTERS[transformer] = WanFamilyAdapter(transformer)
    return adapter


class ChunkedRunner:
    """Runs a pipeline's transformer chunk by chunk with a cache policy and a shared pool."""

    def __init__(
        self, pipe, policy: CachePolicy, pool: ActivationPool, tile: int = 1, cfg_shared: bool = False,
        kv_factory: Callable[[str, KVGeometry], StreamKV] | None = None,
    ) -> None:
        if getattr(pipe.transformer, "is_cache_enabled", False):
            raise ValueError(
                "a diffusers cache is enabled on this transformer; call pipe.transformer.disable_cache() "
                "before using the MotionCache runtime"
            )
        self.pipe, self.policy, self.pool, self.tile = pipe, policy, pool, tile
        self.cfg_shared = cfg_shared  # uncond copies cond's decision each step (see CacheConfig)
        # (branch, geometry) -> the K/V store of one branch; default: keep every finished frame
        self.kv_factory = kv_factory or (lambda branch, geometry: StreamKV.for_geometry(geometry))
        if pool.paired and not cfg_shared:
            raise ValueError("a paired pool (cfg_delta_dtype) stores both CFG branches per slot and needs cfg_shared")
        self.adapter = shared_adapter(pipe.transformer)

    def start(
        self,
        prompt_embeds: dict[str, torch.Tensor],
        latents: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        request_id: str = "req",
        progress=None,
    ) -> "DenoiseRun":
        """A resumable denoising of ``latents``: call ``step()`` until ``done``."""
        return DenoiseRun(self, prompt_embeds, latents, num_inference_steps, guidance_scale, request_id, progress)

    @torch.no_grad()
    def denoise(
        self,
        prompt_embeds: dict[str, torch.Tensor],
        latents: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        request_id: str = "req",
        progress=None,
    ) -> ChunkedResult:
        """Denoise ``latents`` (1, C, F, h, w) in place, chunk by chunk; returns them."""
        run = self.start(prompt_embeds, latents, num_inference_steps, guidance_scale, request_id, progress)
        try:
            while not run.done:
                run.step()
        finally:
            run.close()
        return run.result()

    def _call(self, stream: ChunkStream, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        self.adapter.activate(stream)
        t0 = time.perf_counter()
        try:
            return self.pipe.transformer(
                hidden_states=x, encoder_hidden_states=embeds, return_dict=False, **self.adapter.call_kwargs(t)
            )[0]
        finally:
            self.adapter.activate(None)
            if stream._mode == "skip" and not stream.commit:
                stream.counters.timings["skip_call_s"] += time.perf_counter() - t0


class DenoiseRun:
    """One request's chunked denoising, resumable one unit at a time.

    A unit is one denoising step of the active chunk (every CFG branch) or the chunk's
    commit pass (its K/V at t = 0 joins the prefix); a request has
    ``chunks x (steps + 1)`` units. Between units nothing of this request is active on the
    (shared) transformer, so units of several requests can interleave on one pipeline.
    ``ChunkedRunner.denoise`` is this loop run to the end.
    """

    def __init__(self, runner: ChunkedRunner, prompt_embeds, latents, num_inference_steps, guidance_scale,
                 request_id, progress) -> None:
        pipe = runner.pipe
        block = pipe.causal_block_size
        _, _, frames, lh, lw = latents.shape
        if frames % block:
            raise ValueError(f"{frames} latent frames are not a whole number of causal blocks of {block}")
        self.runner, self.pool, self.policy = runner, runner.pool, runner.policy
        self.prompt_embeds, self.latents, self.guidance_scale = prompt_embeds, latents, guidance_scale
        self.request_id, self.progress = request_id, progress
        ad = self.adapter = runner.adapter
        self.block = block
        self.grid = ad.token_grid(lh, lw)
        self.layout = ChunkLayout(block, self.grid[0], self.grid[1], runner.tile)
        self.branches = BRANCHES if guidance_scale > 1.0 else BRANCHES[:1]
        tokens = frames * self.layout.tokens_per_frame
        geometry = KVGeometry(ad.num_layers, tokens, ad.heads, ad.head_dim, self.layout.tokens_per_frame, block)
        self.kv = {b: runner.kv_factory(b, geometry) for b in self.branches}
        self.counters = CacheCounters()
        pipe.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        # the stock pipeline feeds integer timesteps (its step matrix is int64)
        self.timesteps = pipe.scheduler.timesteps.long()
        # a private copy: another request may reset the pipeline's scheduler between our units
        self._scheduler_template = copy.deepcopy(pipe.scheduler)
        self.previous_last: dict[str, torch.Tensor | None] = {b: None for b in self.branches}
        self.num_chunks = frames // block
        self.units_per_chunk = len(self.timesteps) + 1
        self.total_units = self.num_chunks * self.units_per_chunk
        self.units_done = 0
        self.streams: dict[str, ChunkStream] = {}
        self._recompute_counts: torch.Tensor | None = None
        self._scheduler = None
        self.wall_s = 0.0
        self._t0 = time.perf_counter()
        self.adapter.install()
        self._closed = False

    @property
    def done(self) -> bool:
        return self.units_done >= self.total_units

    @property
    def position(self) -> tuple[int, int]:
        """(chunk, unit within the chunk) of the next unit; unit == steps is the commit."""
        return divmod(self.units_done, self.units_per_chunk)

    @torch.no_grad()
    def step(self) -> str:
        """Run the next unit; returns ``"denoise"`` or ``"commit"``."""
        if self.done or self._closed:
            raise RuntimeError("this denoising run is finished")
        c, i = self.position
        lo, hi = c * self.block, (c + 1) * self.block
        if i == 0:
            self._begin_chunk(c, lo)
        if i < len(self.timesteps):
            self._denoise(lo, hi, self.timesteps[i])
            kind = "denoise"
        else:
            self._commit(c, lo, hi)
            kind = "commit"
        self.units_done += 1
        if self.done:
            self.close()
        return kind

    # -- snapshots (see runtime/snapshot.py) ------------------------------------------------
    @property
    def chunks_done(self) -> int:
        return self.units_done // self.units_per_chunk

    def context_kv(self) -> dict[str, list[torch.Tensor]]:
        """Per CFG branch ``[K0, V0, K1, V1, ...]`` over the finished chunks' tokens (views)."""
        end = self.chunks_done * self.block * self.layout.tokens_per_frame
        return {
            b: [t[:, :end] for layer in range(self.adapter.num_layers) for t in (kv.keys(layer), kv.values(layer))]
            for b, kv in self.kv.items()
        }

    @torch.no_grad()
    def skip_to(
        self,
        chunks_done: int,
        kv: dict[str, list[torch.Tensor]] | None = None,
        previous_last: dict[str, torch.Tensor | None] | None = None,
        chunk_embeds=None,
    ) -> None:
        """Start after ``chunks_done`` chunks whose final latents are already in ``latents``.

        Their context is either given (``kv`` as :meth:`context_kv` returns it, and
        ``previous_last``) or recomputed: one commit pass per chunk and branch, in order,
        with ``chunk_embeds(c)`` (the prompt embeddings chunk ``c`` was made with), i.e. the
        very calls the original run made, so the K/V come out bit-identical.
        """
        if self.units_done or self._closed:
            raise RuntimeError("skip_to must come before the first unit")
        if not 0 <= chunks_done <= self.num_chunks:
            raise ValueError(f"{chunks_done} finished chunks of a {self.num_chunks}-chunk video")
        if kv is not None:
            for b in self.branches:
                if b not in kv:
                    raise ValueError(f"the snapshot has no K/V of CFG branch {b!r} (guidance differs?)")
                for layer in range(self.adapter.num_layers):
                    k, v = kv[b][2 * layer], kv[b][2 * layer + 1]
                    self.kv[b].keys(layer)[:, : k.shape[1]] = k
                    self.kv[b].values(layer)[:, : v.shape[1]] = v
            for b in self.branches:
                self.previous_last[b] = None if not previous_last or previous_last.get(b) is None else previous_last[b]
        else:
            own = self.prompt_embeds
            try:
                for c in range(chunks_done):
                    self.prompt_embeds = chunk_embeds(c) if chunk_embeds is not None else own
                    lo = c * self.block
                    self._begin_chunk(c, lo)
                    self._commit(c, lo, lo + self.block)
            finally:
                self.prompt_embeds = own
        self.units_done = chunks_done * self.units_per_chunk
        if self.done:
            self.close()

    def _begin_chunk(self, c: int, lo: int) -> None:
        lay, ad = self.layout, self.adapter
        self._recompute_counts = torch.zeros(lay.num_blocks, dtype=torch.int32)
        self.streams = {}
        for b in self.branches:
            state = self.policy.new_state(lay)
            owner = (self.request_id, c, "cfg" if self.pool.paired else b)  # paired: one slot, both branches
            self.streams[b] = ChunkStream(
                owner, lay, self.policy, state, self.pool, self.kv[b],
                self.kv[b].chunk_start(lo * lay.tokens_per_frame), ad.rope_rows(lo, self.block, self.grid), self.counters,
                self._recompute_counts, len(self.timesteps),
            )
            self.streams[b].previous_last_frame = self.previous_last[b]
        if self.runner.cfg_shared and "uncond" in self.streams:
            self.streams["uncond"].leader = self.streams["cond"]
            self.streams["cond"].follower = self.streams["uncond"]
        self._scheduler = copy.deepcopy(self._scheduler_template)

    def _denoise(self, lo: int, hi: int, t: torch.Tensor) -> None:
        latents, streams, branches, call = self.latents, self.streams, self.branches, self.runner._call
        x = latents[:, :, lo:hi]
        t_frames = t.expand(1, self.block)
        ts = time.perf_counter()
        pred = {b: call(streams[b], x, t_frames, self.prompt_embeds[b]) for b in branches}
        self.counters.timings["step_s"] += time.perf_counter() - ts
        noise = pred["cond"]
        if len(branches) == 2:
            noise = pred["uncond"] + self.guidance_scale * (pred["cond"] - pred["uncond"])
        latents[:, :, lo:hi] = self._scheduler.step(noise, t, x, return_dict=False)[0]
        for s in streams.values():
            s.end_step()
        if self.progress is not None:
            self.progress.update(1)

    def _commit(self, c: int, lo: int, hi: int) -> None:
        # commit: K/V of the finished chunk at t = 0, as the stock pipeline sees it
        block, lay = self.block, self.layout
        for b in self.branches:
            stream = self.streams[b]
            stream.commit = True
            self.counters.commit_tokens += lay.num_tokens
            self.runner._call(stream, self.latents[:, :, lo:hi], torch.zeros(1, block, dtype=torch.long),
                              self.prompt_embeds[b])
            h = stream.last_input[0].view(block, lay.tokens_per_frame, -1)
            self.previous_last[b] = h[-1].clone()
            self.pool.release(stream.owner)
            self.kv[b].committed(lo * lay.tokens_per_frame, lay.num_tokens)
        self.streams = {}
        # a block spans all frames of its chunk: the same count in every frame
        self.counters.recompute_map.append(self._recompute_counts.view(1, -1).repeat(block, 1))

    def close(self) -> None:
        """Release the adapter (and, if unfinished, this run's pool blocks); idempotent."""
        if self._closed:
            return
        self._closed = True
        for stream in self.streams.values():  # an unfinished chunk's blocks
            self.pool.release(stream.owner)
        self.streams = {}
        self.adapter.activate(None)
        self.adapter.uninstall()
        self.wall_s = time.perf_counter() - self._t0

    def result(self) -> ChunkedResult:
        if not self.done:
            raise RuntimeError(f"denoising unfinished: {self.units_done}/{self.total_units} units")
        return ChunkedResult(self.latents, self.counters, self.wall_s, sum(k.nbytes for k in self.kv.values()))


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
