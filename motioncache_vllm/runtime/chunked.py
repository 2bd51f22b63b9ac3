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
from dataclasses import dataclass, field

import numpy as np
import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.models.wan_adapter import WanFamilyAdapter
from motioncache_vllm.policies import CachePolicy, Decision, PolicyState, StepObservation

BRANCHES = ("cond", "uncond")


class StreamKV:
    """K/V of one (request, branch) for every latent frame, preallocated per layer."""

    def __init__(self, layers: int, tokens: int, heads: int, head_dim: int, dtype=torch.float32) -> None:
        shape = (1, tokens, heads, head_dim)
        self._k = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]
        self._v = [torch.zeros(shape, dtype=dtype) for _ in range(layers)]

    def keys(self, layer: int) -> torch.Tensor:
        return self._k[layer]

    def values(self, layer: int) -> torch.Tensor:
        return self._v[layer]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)


@dataclass
class CacheCounters:
    token_steps_total: int = 0
    token_steps_computed: int = 0
    full_steps: int = 0
    partial_steps: int = 0
    skipped_steps: int = 0
    forced_blocks: int = 0  # recomputed only because their cached residual was missing
    recompute_map: list = field(default_factory=list)  # per chunk: (F, H, W) recompute counts
    # seconds: whole transformer calls of denoising steps; policy decisions and bookkeeping;
    # pool operations; assembling residuals (scatter)
    timings: dict = field(default_factory=lambda: dict(step_s=0.0, policy_s=0.0, pool_s=0.0, scatter_s=0.0))


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
    ) -> None:
        self.owner, self.layout, self.policy, self.state, self.pool = owner, layout, policy, state, pool
        self.kv, self.start, self.end, self.rope = kv, start, start + layout.num_tokens, rope
        self.counters, self.recompute_counts = counters, recompute_counts
        self.previous_last_frame: torch.Tensor | None = None
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
            previous_last_frame=self.previous_last_frame,
        )
        timings = self.counters.timings
        t0 = time.perf_counter()
        decision: Decision = self.policy.decide(self.state, obs)
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
        self.counters.forced_blocks += int(forced.sum()) if decision.mode != "full" else 0
        wanted |= ~present  # a missing residual can only be recomputed
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
            residual = (hidden_out - h_in)[0]
            self.policy.observe_residual(self.state, residual)
            self._store(all_blocks, residual)
            t0 = time.perf_counter()
            self.policy.on_computed(self.state, None)
            timings["policy_s"] += time.perf_counter() - t0
            return hidden_out
        t0 = time.perf_counter()
        cached, _ = self.pool.read(self.owner, all_blocks)  # (blocks, tokens/block, C); all present here
        t1 = time.perf_counter()
        residual = torch.empty_like(h_in[0])
        residual[self._block_tokens.flatten()] = cached.flatten(0, 1)
        if self._mode == "partial":
            tokens = lay.tokens_of(self._blocks)
            residual[tokens] = (hidden_out - h_in[:, tokens])[0]
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
        priorities = self.policy.steps_until_recompute(self.state)
        t1 = time.perf_counter()
        if priorities is not None:
            self.pool.reprioritise(self.owner, priorities)
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1

    # -- helpers ---------------------------------------------------------------------------
    def _store(self, blocks: torch.Tensor, residual: torch.Tensor) -> None:
        timings = self.counters.timings
        t0 = time.perf_counter()
        priorities = self.policy.steps_until_recompute(self.state)
        if priorities is None:
            priorities = torch.zeros(self.layout.num_blocks)
        t1 = time.perf_counter()
        values = residual[self._block_tokens[blocks]]  # (n, tokens/block, C)
        self.pool.write(self.owner, self.layout.num_blocks, blocks, values, priorities[blocks])
        timings["policy_s"] += t1 - t0
        timings["pool_s"] += time.perf_counter() - t1


@dataclass
class ChunkedResult:
    latents: torch.Tensor
    counters: CacheCounters
    wall_s: float
    kv_bytes: int


class ChunkedRunner:
    """Runs a pipeline's transformer chunk by chunk with a cache policy and a shared pool."""

    def __init__(self, pipe, policy: CachePolicy, pool: ActivationPool, tile: int = 1) -> None:
        if getattr(pipe.transformer, "is_cache_enabled", False):
            raise ValueError(
                "a diffusers cache is enabled on this transformer; call pipe.transformer.disable_cache() "
                "before using the MotionCache runtime"
            )
        self.pipe, self.policy, self.pool, self.tile = pipe, policy, pool, tile
        self.adapter = WanFamilyAdapter(pipe.transformer)

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
        pipe, transformer = self.pipe, self.pipe.transformer
        block = pipe.causal_block_size
        _, _, frames, lh, lw = latents.shape
        if frames % block:
            raise ValueError(f"{frames} latent frames are not a whole number of causal blocks of {block}")
        grid = self.adapter.token_grid(lh, lw)
        layout = ChunkLayout(block, grid[0], grid[1], self.tile)
        branches = BRANCHES if guidance_scale > 1.0 else BRANCHES[:1]
        ad = self.adapter
        kv = {b: StreamKV(ad.num_layers, frames * layout.tokens_per_frame, ad.heads, ad.head_dim) for b in branches}
        counters = CacheCounters()
        pipe.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        # the stock pipeline feeds integer timesteps (its step matrix is int64)
        timesteps = pipe.scheduler.timesteps.long()
        previous_last: dict[str, torch.Tensor | None] = {b: None for b in branches}
        t0 = time.perf_counter()
        self.adapter.install()
        try:
            for c in range(frames // block):
                lo, hi = c * block, (c + 1) * block
                recompute_counts = torch.zeros(layout.num_blocks, dtype=torch.int32)
                streams = {}
                for b in branches:
                    state = self.policy.new_state(layout)
                    streams[b] = ChunkStream(
                        (request_id, c, b), layout, self.policy, state, self.pool, kv[b],
                        lo * layout.tokens_per_frame, ad.rope_rows(lo, block, grid), counters, recompute_counts,
                    )
                    streams[b].previous_last_frame = previous_last[b]
                scheduler = copy.deepcopy(pipe.scheduler)
                for t in timesteps:
                    x = latents[:, :, lo:hi]
                    t_frames = t.expand(1, block)
                    ts = time.perf_counter()
                    pred = {b: self._call(streams[b], x, t_frames, prompt_embeds[b]) for b in branches}
                    counters.timings["step_s"] += time.perf_counter() - ts
                    noise = pred["cond"]
                    if len(branches) == 2:
                        noise = pred["uncond"] + guidance_scale * (pred["cond"] - pred["uncond"])
                    latents[:, :, lo:hi] = scheduler.step(noise, t, x, return_dict=False)[0]
                    for s in streams.values():
                        s.end_step()
                    if progress is not None:
                        progress.update(1)
                # commit: K/V of the finished chunk at t = 0, as the stock pipeline sees it
                for b in branches:
                    streams[b].commit = True
                    self._call(streams[b], latents[:, :, lo:hi], torch.zeros(1, block, dtype=torch.long),
                               prompt_embeds[b])
                    h = streams[b].last_input[0].view(block, layout.tokens_per_frame, -1)
                    previous_last[b] = h[-1].clone()
                    self.pool.release(streams[b].owner)
                # a block spans all frames of its chunk: the same count in every frame
                counters.recompute_map.append(recompute_counts.view(1, -1).repeat(block, 1))
        finally:
            self.adapter.activate(None)
            self.adapter.uninstall()
        wall = time.perf_counter() - t0
        return ChunkedResult(latents, counters, wall, sum(k.nbytes for k in kv.values()))

    def _call(self, stream: ChunkStream, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        self.adapter.activate(stream)
        try:
            return self.pipe.transformer(
                hidden_states=x, timestep=t, encoder_hidden_states=embeds, enable_diffusion_forcing=True,
                return_dict=False,
            )[0]
        finally:
            self.adapter.activate(None)


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
