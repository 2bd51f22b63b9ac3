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

This module is the runner (:class:`ChunkedRunner`, :class:`DenoiseRun`, the one adapter
per transformer); the per-stream state is :mod:`.stream`.
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.models.wan_adapter import WanFamilyAdapter
from motioncache_vllm.policies import CachePolicy
from motioncache_vllm.runtime.stream import CacheCounters, ChunkStream, KVGeometry, StreamKV

BRANCHES = ("cond", "uncond")


@dataclass
class TransformerCall:
    """One transformer call a unit needs: one CFG branch of one chunk (batch 1). The runner
    runs it alone (:meth:`ChunkedRunner.run_calls`) or stacked with other requests' calls
    of the same shape (:func:`run_units`); ``out`` and ``seconds`` are filled in."""

    stream: ChunkStream
    x: torch.Tensor  # (1, C, F, h, w) latents of the chunk
    t: torch.Tensor  # (1, F) timestep of each frame
    embeds: torch.Tensor  # (1, L, D) prompt embeddings of the branch
    out: torch.Tensor | None = None
    seconds: float = 0.0  # this call's share of the transformer call it ran in

    def shape_key(self) -> tuple:
        return (tuple(self.x.shape), self.x.dtype, tuple(self.t.shape), tuple(self.embeds.shape), self.embeds.dtype)


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
        self,
        pipe,
        policy: CachePolicy,
        pool: ActivationPool,
        tile: int = 1,
        cfg_shared: bool = False,
        kv_factory: Callable[[str, KVGeometry], StreamKV] | None = None,
        cfg_batched: bool = False,
    ) -> None:
        if getattr(pipe.transformer, "is_cache_enabled", False):
            raise ValueError(
                "a diffusers cache is enabled on this transformer; call pipe.transformer.disable_cache() "
                "before using the MotionCache runtime"
            )
        self.pipe, self.policy, self.pool, self.tile = pipe, policy, pool, tile
        # uncond copies cond's decision each step; a paired pool (PoolConfig.cfg_delta_dtype) implies
        # it, and so does a policy whose branches must not pick different blocks
        self.cfg_shared = cfg_shared or pool.paired or policy.shares_cfg_decisions
        self.cfg_batched = cfg_batched  # a unit's CFG branches in one transformer call (PoolConfig.cfg_batched)
        # (branch, geometry) -> the K/V store of one branch; default: keep every finished frame
        self.kv_factory = kv_factory or (lambda branch, geometry: StreamKV.for_geometry(geometry))
        self.adapter = shared_adapter(pipe.transformer)
        self.call_kwargs: dict = {}  # more transformer arguments of every call (e.g. the stock call's fps)

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
                hidden_states=x,
                encoder_hidden_states=embeds,
                return_dict=False,
                **self.adapter.call_kwargs(t),
                **self.call_kwargs,
            )[0]
        finally:
            self.adapter.activate(None)
            if stream._mode == "skip" and not stream.commit:
                stream.counters.timings["skip_call_s"] += time.perf_counter() - t0

    def run_calls(self, calls: list[TransformerCall]) -> None:
        """Run ``calls`` one by one (batch 1 each)."""
        for call in calls:
            t0 = time.perf_counter()
            call.out = self._call(call.stream, call.x, call.t, call.embeds)
            call.seconds = time.perf_counter() - t0

    def run_unit_calls(self, calls: list[TransformerCall]) -> None:
        """Run the calls of one request's unit (its CFG branches): stacked into one call with
        ``cfg_batched``, else one by one. A runner with extra call arguments (the stock call's
        per-sample ``fps``) or its own ``_call`` runs them one by one either way, and so do
        branches of different shapes (e.g. prompt embeddings of different lengths). Both ways
        decide alike, whatever the pool: a pair of branches reuses only when both had all their
        blocks at plan (``ChunkStream.plan``)."""
        if self.cfg_batched and self.stackable and len({call.shape_key() for call in calls}) == 1:
            self.call_batch(calls)
        else:
            self.run_calls(calls)

    @property
    def stackable(self) -> bool:
        """Whether this runner's calls may be stacked at all: not one with its own ``_call`` or
        with extra per-sample call arguments."""
        return self.batchable and not self.call_kwargs

    def call_batch(self, calls: list[TransformerCall]) -> None:
        """Run ``calls`` (same shapes, see :meth:`TransformerCall.shape_key`) as one
        transformer call, the samples stacked along the batch: each keeps its own K/V
        context, RoPE rows, timesteps, prompt embeddings and cache decision."""
        if len(calls) == 1:
            return self.run_calls(calls)
        streams = [c.stream for c in calls]
        self.adapter.activate(streams)
        t0 = time.perf_counter()
        try:
            out = self.pipe.transformer(
                hidden_states=torch.cat([c.x for c in calls]),
                encoder_hidden_states=torch.cat([c.embeds for c in calls]),
                return_dict=False,
                **self.adapter.call_kwargs(torch.cat([c.t for c in calls])),
                **self.call_kwargs,
            )[0]
        finally:
            self.adapter.activate(None)
        share = (time.perf_counter() - t0) / len(calls)
        for j, call in enumerate(calls):
            call.out, call.seconds = out[j : j + 1], share
            if call.stream._mode == "skip" and not call.stream.commit:
                call.stream.counters.timings["skip_call_s"] += share

    @property
    def batchable(self) -> bool:
        """Whether this runner's calls may be stacked with others' (a runner that overrides
        ``_call``, e.g. the oracle's, runs its calls alone)."""
        return type(self)._call is ChunkedRunner._call


def run_units(runs: list["DenoiseRun"], max_batch: int | None = None) -> list[str | BaseException]:
    """Advance every run by one unit, stacking the transformer calls of the same shape (and
    the same transformer) into one call of at most ``max_batch`` samples: every CFG branch
    of every request whose chunk has that shape, denoising steps and commits alike. Calls in
    order of ``runs`` (a CFG leader before its follower). Returns each run's unit kind, or
    the exception that ended its unit (an error of a shared call is every member's)."""
    results: list[str | BaseException | None] = [None] * len(runs)
    pending: list[tuple[int, list[TransformerCall]]] = []
    for r, run in enumerate(runs):
        try:
            pending.append((r, run.begin_unit()))
        except Exception as exc:  # noqa: BLE001  (this run alone)
            results[r] = exc
    groups: dict[tuple, list[tuple[int, TransformerCall]]] = {}
    for r, calls in pending:
        runner = runs[r].runner
        for call in calls:
            key = (id(runner.adapter), call.shape_key()) if runner.stackable else (r,)
            groups.setdefault(key, []).append((r, call))
    for members in groups.values():
        size = max_batch or len(members)
        for lo in range(0, len(members), size):
            part = members[lo : lo + size]
            if any(results[r] is not None for r, _ in part):
                part = [(r, c) for r, c in part if results[r] is None]
            if not part:
                continue
            try:
                runs[part[0][0]].runner.call_batch([c for _, c in part])
            except Exception as exc:  # noqa: BLE001
                for r, _ in part:
                    results[r] = exc
    for r, _ in pending:
        if results[r] is None:
            try:
                results[r] = runs[r].end_unit()
            except Exception as exc:  # noqa: BLE001
                results[r] = exc
        elif isinstance(results[r], BaseException):
            runs[r].abort_unit()
    return results


class DenoiseRun:
    """One request's chunked denoising, resumable one unit at a time.

    A unit is one denoising step of the active chunk (every CFG branch) or the chunk's
    commit pass (its K/V at t = 0 joins the prefix); a request has
    ``chunks x (steps + 1)`` units. Between units nothing of this request is active on the
    (shared) transformer, so units of several requests can interleave on one pipeline.
    ``ChunkedRunner.denoise`` is this loop run to the end.
    """

    def __init__(
        self,
        runner: ChunkedRunner,
        prompt_embeds,
        latents,
        num_inference_steps,
        guidance_scale,
        request_id,
        progress,
        frames_per_chunk: int | None = None,
    ) -> None:
        pipe = runner.pipe
        per_chunk = frames_per_chunk or pipe.causal_block_size
        _, _, frames, lh, lw = latents.shape
        if frames % per_chunk:
            raise ValueError(f"{frames} latent frames are not a whole number of causal blocks of {per_chunk}")
        self.runner, self.pool, self.policy = runner, runner.pool, runner.policy
        self.prompt_embeds, self.latents, self.guidance_scale = prompt_embeds, latents, guidance_scale
        self.request_id, self.progress = request_id, progress
        ad = self.adapter = runner.adapter
        self.frames_per_chunk = per_chunk  # latent frames (the pipeline's causal block)
        self.grid = ad.token_grid(lh, lw)
        self.layout = ChunkLayout(per_chunk, self.grid[0], self.grid[1], runner.tile)
        self.branches = BRANCHES if guidance_scale > 1.0 else BRANCHES[:1]
        tokens = frames * self.layout.tokens_per_frame
        geometry = KVGeometry(ad.num_layers, tokens, ad.heads, ad.head_dim, self.layout.tokens_per_frame, per_chunk)
        self.kv = {b: runner.kv_factory(b, geometry) for b in self.branches}
        self.counters = CacheCounters()
        pipe.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        # the stock pipeline feeds integer timesteps (its step matrix is int64)
        self.timesteps = pipe.scheduler.timesteps.long()
        # a private copy: another request may reset the pipeline's scheduler between our units
        self._scheduler_template = copy.deepcopy(pipe.scheduler)
        sigmas = getattr(pipe.scheduler, "sigmas", None)  # the run's schedule: policies' dt, the cut guard's x0
        self.sigmas = None if sigmas is None else tuple(float(v) for v in sigmas)
        self.previous_last: dict[str, torch.Tensor | None] = {b: None for b in self.branches}
        self.num_chunks = frames // per_chunk
        self.units_per_chunk = len(self.timesteps) + 1
        self.total_units = self.num_chunks * self.units_per_chunk
        self.units_done = 0
        self.streams: dict[str, ChunkStream] = {}
        self._recompute_counts: torch.Tensor | None = None
        self._scheduler = None
        self._pending: tuple | None = None  # the unit begun by begin_unit, until end_unit
        self.wall_s = 0.0
        self._t0 = time.perf_counter()
        self.adapter.install()
        self._closed = False
        # scene-cut guard (see _check_cut); off where a previous chunk's frames may not be final
        self.cut_guard = True

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
        calls = self.begin_unit()
        try:
            self.runner.run_unit_calls(calls)
        except BaseException:
            self.abort_unit()
            raise
        return self.end_unit()

    def begin_unit(self) -> list[TransformerCall]:
        """First half of :meth:`step`: set up the next unit; the transformer calls it needs
        (to be run, then :meth:`end_unit`)."""
        if self.done or self._closed:
            raise RuntimeError("this denoising run is finished")
        if self._pending is not None:
            raise RuntimeError("the previous unit is not finished")
        c, i = self.position
        lo, hi = c * self.frames_per_chunk, (c + 1) * self.frames_per_chunk
        if i == 0:
            self._begin_chunk(c, lo)
        if i < len(self.timesteps):
            calls = self._denoise_calls(lo, hi, self.timesteps[i])
            self._pending = ("denoise", c, lo, hi, self.timesteps[i], calls)
        else:
            calls = self._commit_calls(lo, hi)
            self._pending = ("commit", c, lo, hi, 0, calls)
        return calls

    def end_unit(self) -> str:
        """Second half of :meth:`step`, once the calls of :meth:`begin_unit` have run."""
        kind, c, lo, hi, t, calls = self._pending
        self._pending = None
        if kind == "denoise":
            self._denoise_end(lo, hi, t, calls)
        else:
            self._commit_end(c, lo, hi, calls)
        self.units_done += 1
        if self.done:
            self.close()
        return kind

    def abort_unit(self) -> None:
        """Forget a begun unit whose calls failed (the caller closes the run)."""
        self._pending = None

    # -- snapshots (see runtime/snapshot.py) ------------------------------------------------
    @property
    def chunks_done(self) -> int:
        return self.units_done // self.units_per_chunk

    @property
    def chunks_denoised(self) -> int:
        """Chunks whose latents are final: the finished ones, and the one whose commit pass is
        next (the commit only computes its K/V for later chunks; its latents do not change)."""
        c, i = self.position
        return c + (i == len(self.timesteps))

    def context_kv(self) -> dict[str, list[torch.Tensor]]:
        """Per CFG branch ``[K0, V0, K1, V1, ...]`` over the finished chunks' tokens (views)."""
        end = self.chunks_done * self.frames_per_chunk * self.layout.tokens_per_frame
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
                    lo = c * self.frames_per_chunk
                    self._begin_chunk(c, lo)
                    self._commit(c, lo, lo + self.frames_per_chunk)
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
            state.stream_key = (self.request_id, b)
            owner = (self.request_id, c, "cfg" if self.pool.paired else b)  # paired: one slot, both branches
            self.streams[b] = ChunkStream(
                owner,
                lay,
                self.policy,
                state,
                self.pool,
                self.kv[b],
                self.kv[b].chunk_start(lo * lay.tokens_per_frame),
                ad.rope_rows(lo, self.frames_per_chunk, self.grid),
                self.counters,
                self._recompute_counts,
                len(self.timesteps),
                self.sigmas,
                float(self.guidance_scale),
            )
            self.streams[b].previous_last_frame = self.previous_last[b]
        if "uncond" in self.streams:
            self.streams["cond"].cfg_partner = self.streams["uncond"]
            self.streams["uncond"].cfg_partner = self.streams["cond"]
        if self.runner.cfg_shared and "uncond" in self.streams:
            self.streams["uncond"].leader = self.streams["cond"]
            self.streams["cond"].follower = self.streams["uncond"]
            self.streams["cond"].state.partner = self.streams["uncond"].state
        self._scheduler = copy.deepcopy(self._scheduler_template)

    def _denoise(self, lo: int, hi: int, t: torch.Tensor) -> None:
        calls = self._denoise_calls(lo, hi, t)
        self.runner.run_unit_calls(calls)
        self._denoise_end(lo, hi, t, calls)

    def _denoise_calls(self, lo: int, hi: int, t: torch.Tensor) -> list[TransformerCall]:
        x = self.latents[:, :, lo:hi]
        t_frames = t.expand(1, self.frames_per_chunk)
        return [TransformerCall(self.streams[b], x, t_frames, self.prompt_embeds[b]) for b in self.branches]

    def _denoise_end(self, lo: int, hi: int, t: torch.Tensor, calls: list[TransformerCall]) -> None:
        latents, streams, branches = self.latents, self.streams, self.branches
        self.counters.timings["step_s"] += sum(call.seconds for call in calls)
        pred = {b: call.out for b, call in zip(branches, calls)}
        noise = pred["cond"]
        if len(branches) == 2:
            noise = pred["uncond"] + self.guidance_scale * (pred["cond"] - pred["uncond"])
        if self.cut_guard and lo > 0 and streams["cond"].state.step == 0:
            self._check_cut(lo, noise)
        latents[:, :, lo:hi] = self._scheduler.step(noise, t, latents[:, :, lo:hi], return_dict=False)[0]
        for s in streams.values():
            s.end_step()
        if self.progress is not None:
            self.progress.update(1)

    def _check_cut(self, lo: int, noise: torch.Tensor) -> None:
        """Scene-cut guard, at the chunk's first step (before the policy may skip anything): the
        step's estimate of the clean chunk (flow prediction: x0 = x - sigma * v) against the
        previous chunk's final last frame. Both frames are averaged onto a ``cut_grid`` x
        ``cut_grid`` grid and the change is 1 - their correlation (0 = the same picture, 1 =
        unrelated, 2 = inverted); above ``cut_threshold`` the chunk is a cut and every
        ``cut_full_every``-th step of it (1: every step) runs in full, whatever the policy
        decides; above ``cut_band_threshold`` only (the band) every ``cut_band_every``-th step.
        An absolute threshold needs no history, so the second chunk of a video is checked too.

        Why this signal (benchmarks/RESULTS.md, "Cuts, session 8"): the first step's x0 already
        shows the next scene, but with token-sized noise, so the full-resolution 1 - corr of
        session 7 was high on uncut chunks too (fast motion, textured pans, near-empty frames) and
        needed a running median that a fast chunk before a cut inflated (a missed cut at 1.45x,
        a bounce at 1.72x). On the 4 x 4 grid the noise averages out and a moving object stays
        in its cell or the next: of 80+ candidates on 37 full-compute videos (13 cuts, 150 uncut
        chunks: motion, bounces, pans, static scenes, a caption change of the same subject) it
        separated cuts (>= 0.98) from uncut chunks (<= 0.81) by the widest margin.
        Why this action and the band ("Cuts, session 9"): every other step in full left held-out
        cut chunks 3.5-13 dB below their video's median, the whole chunk in full leaves none
        (cuts are rare, so the cost is small); a held-out cut came at 0.81, inside the range of
        uncut chunks, and no second signal (72 candidates of the first step, nor the final
        latents) told the two apart, so the band below the threshold has its own action: the
        whole chunk too by default, every other step where speed matters more."""
        if self.sigmas is None:  # a scheduler without flow sigmas: no x0 estimate, no guard
            return
        cfg = self.policy.config
        every = getattr(cfg, "cut_full_every", 0)  # a config outside PolicyConfigBase (the oracle's): no guard
        if not every:
            return
        x0 = self.latents[:, :, lo] - self.sigmas[0] * noise[:, :, 0]
        grid = (cfg.cut_grid, cfg.cut_grid)
        pair = torch.stack(
            [
                torch.nn.functional.adaptive_avg_pool2d(f.float(), grid).flatten()
                for f in (x0, self.latents[:, :, lo - 1])
            ]
        )
        change = 1.0 - float(torch.corrcoef(pair)[0, 1].nan_to_num(1.0))
        counters = self.counters
        counters.chunk_changes.append(change)
        chunk = lo // self.frames_per_chunk
        if change > cfg.cut_threshold:
            counters.cut_chunks.append(chunk)
        elif cfg.cut_band_every and change > cfg.cut_band_threshold:
            counters.cut_band_chunks.append(chunk)
            every = cfg.cut_band_every
        else:
            return
        for stream in self.streams.values():
            stream.full_every = every

    def _commit(self, c: int, lo: int, hi: int, x: torch.Tensor | None = None, t: int = 0) -> None:
        calls = self._commit_calls(lo, hi, x, t)
        self.runner.run_unit_calls(calls)
        self._commit_end(c, lo, hi, calls)

    def _commit_calls(self, lo: int, hi: int, x: torch.Tensor | None = None, t: int = 0) -> list[TransformerCall]:
        # commit: K/V of the finished chunk at t = 0, as the stock pipeline sees it (a long
        # video's re-noised prefix: other latents ``x`` at ``t``)
        x = self.latents[:, :, lo:hi] if x is None else x
        calls = []
        for b in self.branches:
            stream = self.streams[b]
            stream.commit = True
            self.counters.commit_tokens += self.layout.num_tokens
            t_frames = torch.full((1, self.frames_per_chunk), t, dtype=torch.long)
            calls.append(TransformerCall(stream, x, t_frames, self.prompt_embeds[b]))
        return calls

    def _commit_end(self, c: int, lo: int, hi: int, calls: list[TransformerCall]) -> None:
        per_chunk, lay = self.frames_per_chunk, self.layout
        for b in self.branches:
            stream = self.streams[b]
            h = stream.last_input[0].view(per_chunk, lay.tokens_per_frame, -1)
            self.previous_last[b] = h[-1].clone()
            self.pool.release(stream.owner)
            self.kv[b].committed(lo * lay.tokens_per_frame, lay.num_tokens)
        self.streams = {}
        # a block spans all frames of its chunk: the same count in every frame
        self.counters.recompute_map.append(self._recompute_counts.view(1, -1).repeat(per_chunk, 1))

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
