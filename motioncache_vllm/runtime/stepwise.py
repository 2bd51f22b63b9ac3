"""A request's chunked generation as a resumable object: :class:`StepwiseGeneration`.

``generate_video(runtime="chunked")`` is this object stepped to the end, so the two give
the same video bit for bit. A server interleaves several of them on one pipeline (the
vLLM plugin advances every running request by one unit per engine step)::

    gen = StepwiseGeneration(pipe, request, cache=cache, pool=pool, request_id="a")
    while not gen.done:
        gen.step()          # one denoising step of the active chunk (all CFG branches),
                            # or the chunk's commit pass
    result = gen.result()   # GenerationResult, as generate_video returns it

Construction encodes the prompt and draws the initial noise (seeding the global RNG as
``generate_video`` does), so it must not be interleaved with another request's noise
draw; the units themselves use no randomness. Several live generations may share one
pipeline and one pool (owners ``(request_id, chunk, branch)``); the transformer's hooks
stay installed while any of them is live and are removed when the last one finishes or
is closed.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import torch

from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.request import (
    GenerationResult,
    ResolvedRequest,
    decode_latents,
    make_pool,
    resolve,
    seeded_generator,
)
from motioncache_vllm.runtime.snapshot import CountersData, GenerationSnapshot, TensorData, VideoPlan, chunks_of


class StepwiseGeneration:
    """One chunked-runtime generation, advanced one unit at a time (see module docstring)."""

    def __init__(
        self,
        pipe,
        request: GenerationRequest | ResolvedRequest,
        cache: CacheConfig | None = None,
        pool: ActivationPool | None = None,
        request_id: str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        kv_factory=None,
    ) -> None:
        """``kv_factory``: (branch, KVGeometry) -> the context K/V store of a CFG branch
        (see ``ChunkedRunner``); default: every finished frame kept."""
        r = request if isinstance(request, ResolvedRequest) else resolve(pipe, request)
        with torch.inference_mode():  # as generate_video (see its docstring)
            t0 = time.perf_counter()
            generator = generator if generator is not None else seeded_generator(r.seed)
            padded = pipe.padded_num_frames(r.num_frames)
            latents = pipe.prepare_latents(
                1,
                pipe.transformer.config.in_channels,
                r.height,
                r.width,
                padded,
                torch.float32,
                pipe._execution_device,
                generator,
            )[0]
        self._setup(pipe, VideoPlan.of(r), latents, cache, pool, request_id, progress, t0, kv_factory=kv_factory)

    # -- snapshots (runtime/snapshot.py) ---------------------------------------------------
    @classmethod
    def resume(
        cls,
        pipe,
        snapshot: GenerationSnapshot,
        cache: CacheConfig | None = None,
        pool: ActivationPool | None = None,
        request_id: str | None = None,
        progress: bool = False,
    ) -> "StepwiseGeneration":
        """Continue the generation ``snapshot`` was taken from: the same frames as the run
        that was never interrupted (same plan, same units from the next chunk on)."""
        gen = cls.__new__(cls)
        with torch.inference_mode():
            t0 = time.perf_counter()
            latents = snapshot.latents.tensor()
        gen._setup(pipe, snapshot.plan, latents, cache, pool, request_id, progress, t0, restore=snapshot)
        return gen

    @classmethod
    def extend(
        cls,
        pipe,
        snapshot: GenerationSnapshot,
        prompt: str,
        num_frames: int,
        seed: int = 0,
        cache: CacheConfig | None = None,
        pool: ActivationPool | None = None,
        request_id: str | None = None,
        progress: bool = False,
    ) -> "StepwiseGeneration":
        """Continue a finished video to ``num_frames`` pixel frames in all, the new chunks
        denoised for ``prompt`` from noise of ``seed``; the finished chunks are kept as they
        are (so the first frames of the result equal the original's) and serve as context."""
        if not snapshot.done:
            raise ValueError(
                f"only a finished video can be extended ({snapshot.chunks_done}/{snapshot.num_chunks} chunks "
                "done): resume it first"
            )
        plan = snapshot.plan.extended(prompt, num_frames, seed)
        gen = cls.__new__(cls)
        with torch.inference_mode():
            t0 = time.perf_counter()
            old = snapshot.latents.tensor()
            new_frames = (pipe.padded_num_frames(num_frames) - 1) // pipe.vae_scale_factor_temporal + 1 - old.shape[2]
            generator = seeded_generator(seed)
            noise = torch.randn(
                (*old.shape[:2], max(new_frames, 0), *old.shape[3:]), generator=generator, dtype=old.dtype
            )
            latents = torch.cat([old, noise], dim=2)
        gen._setup(pipe, plan, latents, cache, pool, request_id, progress, t0, restore=snapshot)
        return gen

    def snapshot(self, include_kv: bool = True) -> GenerationSnapshot:
        """The state after the last finished chunk; only between chunks (right after a
        commit unit, before any unit, or when done). ``include_kv=False``: without the
        context K/V (recomputed on resume; a much smaller snapshot)."""
        run = self.run
        if run.position[1] != 0:
            c, i = run.position
            raise RuntimeError(f"a snapshot is taken between chunks; chunk {c} is at unit {i}")
        budgeted = sorted(b for b, kv in run.kv.items() if not kv.keeps_every_frame)
        if budgeted:
            # its K/V rows are compacted and its eviction state is not in a snapshot; recomputing
            # the context on resume would give the full-context video, not this one
            raise RuntimeError(
                f"a snapshot of a generation whose context K/V store evicts rows ({type(run.kv[budgeted[0]]).__name__}, "
                f"branches {', '.join(budgeted)}) is not supported: snapshots hold every finished frame's K/V"
            )
        kv = previous = None
        with torch.inference_mode():
            if include_kv:
                kv = {b: [TensorData.of(t) for t in ts] for b, ts in run.context_kv().items()}
                previous = {b: TensorData.of(t) for b, t in run.previous_last.items() if t is not None}
            return GenerationSnapshot(
                plan=self.plan,
                chunks_done=run.chunks_done,
                num_chunks=run.num_chunks,
                latents=TensorData.of(run.latents),
                kv=kv,
                previous_last=previous,
                counters=CountersData.of(run.counters),
            )

    @property
    def resumed_chunks(self) -> int:
        """Chunks this object did not denoise itself (taken from a snapshot)."""
        return self._resumed_chunks

    def _setup(
        self,
        pipe,
        plan: VideoPlan,
        latents,
        cache,
        pool,
        request_id,
        progress,
        t0,
        restore: GenerationSnapshot | None = None,
        kv_factory=None,
    ) -> None:
        from tqdm.auto import tqdm

        from motioncache_vllm.policies import make_policy
        from motioncache_vllm.policies.calibration import model_calibration
        from motioncache_vllm.runtime.chunked import ChunkedRunner

        self.pipe, self.plan = pipe, plan
        self.cache = cache = cache or CacheConfig()
        r = self.request = plan.resolved()
        self.request_id = request_id or uuid.uuid4().hex
        self._result: GenerationResult | None = None
        self._t0 = t0
        with torch.inference_mode():
            calibration = model_calibration(getattr(pipe, "name_or_path", None), pipe.transformer.config)
            policy = make_policy(cache.policy, None, *calibration)  # once per request
            self.pool = pool if pool is not None else make_pool(pipe, cache.pool)
            pipe._guidance_scale = plan.guidance
            embeds = self._embeds(plan.prompt)
            self.runner = ChunkedRunner(
                pipe,
                policy,
                self.pool,
                tile=cache.pool.tile,
                cfg_shared=cache.pool.cfg_shared,
                kv_factory=kv_factory,
                cfg_batched=cache.pool.cfg_batched,
            )
            chunks = latents.shape[2] // pipe.causal_block_size
            done = restore.chunks_done if restore is not None else 0
            self._resumed_chunks = done
            self._bar = tqdm(total=(chunks - done) * r.steps, disable=not progress, leave=False, desc=cache.policy.name)
            self._latent_shape = latents.shape
            self.run = self.runner.start(
                embeds, latents, r.steps, r.guidance, request_id=self.request_id, progress=self._bar
            )
            if restore is not None:
                self._restore(restore)

    def _embeds(self, prompt: str) -> dict[str, torch.Tensor]:
        pipe, plan = self.pipe, self.plan
        cond, uncond = pipe.encode_prompt(
            prompt,
            None,
            do_classifier_free_guidance=plan.guidance > 1.0,
            num_videos_per_prompt=1,
            max_sequence_length=plan.max_sequence_length,
            device=pipe._execution_device,
        )
        embeds = {"cond": cond.to(pipe.transformer.dtype)}
        if uncond is not None:
            embeds["uncond"] = uncond.to(pipe.transformer.dtype)
        return embeds

    def _restore(self, snap: GenerationSnapshot) -> None:
        run = self.run
        try:
            if snap.kv is not None:
                kv = {b: [t.tensor() for t in ts] for b, ts in snap.kv.items()}
                previous = {b: t.tensor() for b, t in (snap.previous_last or {}).items()}
                run.skip_to(snap.chunks_done, kv, previous)
            else:
                run.skip_to(snap.chunks_done, chunk_embeds=self._chunk_embeds(snap.plan))
            snap.counters.restore(run.counters)
        except BaseException:
            self.close()
            raise

    def _chunk_embeds(self, plan: VideoPlan):
        """chunk index -> the prompt embeddings its segment of ``plan`` was denoised with."""
        pipe = self.pipe
        ends, cache = [], {}
        for seg in plan.segments:
            ends.append(chunks_of(seg.num_frames, pipe.vae_scale_factor_temporal, pipe.causal_block_size))

        def embeds(c: int) -> dict[str, torch.Tensor]:
            prompt = next(seg.prompt for seg, end in zip(plan.segments, ends) if c < end)
            if prompt not in cache:
                cache[prompt] = self._embeds(prompt)
            return cache[prompt]

        return embeds

    # -- progress ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.run.done

    @property
    def total_units(self) -> int:
        """Units of this request: chunks x (denoising steps + 1 commit)."""
        return self.run.total_units

    @property
    def units_done(self) -> int:
        return self.run.units_done

    @property
    def position(self) -> tuple[int, int]:
        """(chunk, unit in chunk) of the next unit; unit == steps is the chunk's commit."""
        return self.run.position

    @property
    def chunks_done(self) -> int:
        return self.run.chunks_done

    @property
    def chunks_denoised(self) -> int:
        """Chunks whose frames are final (:attr:`runtime.chunked.DenoiseRun.chunks_denoised`)."""
        return self.run.chunks_denoised

    @property
    def num_chunks(self) -> int:
        return self.run.num_chunks

    def step(self) -> str:
        """Advance by one unit: ``"denoise"`` (one step, every CFG branch) or ``"commit"``.
        On an error the generation is closed (its pool blocks freed) and the error raised."""
        try:
            with torch.inference_mode():
                return self.run.step()
        except BaseException:
            self.close()
            raise
        finally:
            self._after_unit()

    # two halves of step(), for step_together (one batched transformer call for many requests)
    def _runs(self) -> list:
        return [self.run]

    def _end_unit(self, outcome):
        """The unit's kind, or (an exception) close and raise it."""
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        except BaseException:
            self.close()
            raise
        finally:
            self._after_unit()

    def _after_unit(self) -> None:
        if self.run.done or self.run._closed:
            self._bar.close()

    def close(self) -> None:
        """Abandon (or finish) the generation: frees its pool blocks and its hold on the
        transformer's hooks. Idempotent."""
        self.run.close()
        self._bar.close()

    # -- output --------------------------------------------------------------------------
    def frames_so_far(self) -> np.ndarray:
        """The decoded frames of the denoised chunks (:attr:`chunks_denoised`: a chunk counts
        once its last denoising step ran, before its commit pass), trimmed to the request:
        what a stream sends as the video is made. For a causal VAE (Wan's; the embedded
        linear code) they are the first frames of the final video, bit for bit."""
        run, pipe = self.run, self.pipe
        latent = run.chunks_denoised * run.frames_per_chunk
        if latent == 0:
            return np.zeros((0, self.request.height, self.request.width, 3), dtype=np.uint8)
        n = min((latent - 1) * pipe.vae_scale_factor_temporal + 1, self.request.num_frames)
        with torch.inference_mode():
            return decode_latents(pipe, run.latents[:, :, :latent], n)

    def result(self) -> GenerationResult:
        """The decoded video and stats (decoded on the first call)."""
        if self._result is not None:
            return self._result
        from motioncache_vllm.runtime.stream import recompute_map_frames

        with torch.inference_mode():
            result = self.run.result()
            r, pipe, pool, cache = self.request, self.pipe, self.pool, self.cache
            frames = decode_latents(pipe, result.latents, r.num_frames)
        wall = time.perf_counter() - self._t0
        c = result.counters
        grid = self.runner.adapter.token_grid(self._latent_shape[3], self._latent_shape[4])
        stats = dict(
            token_steps_total=c.token_steps_total,
            token_steps_computed=c.token_steps_computed,
            commit_token_passes=c.commit_tokens,
            # every token pass counts, the commit passes too: they are work in both runs
            ideal_speedup=round(
                (c.token_steps_total + c.commit_tokens) / max(c.token_steps_computed + c.commit_tokens, 1), 4
            ),
            full_steps=c.full_steps,
            partial_steps=c.partial_steps,
            skipped_steps=c.skipped_steps,
            forced_blocks=c.forced_blocks,
            scene_cuts=list(c.cut_chunks),  # chunks the scene-cut guard ran in full (cut_full_every)
            scene_cut_band=list(c.cut_band_chunks),  # in its band: every cut_band_every-th step in full
            chunk_changes=[round(x, 4) for x in c.chunk_changes],  # its signal, chunks 1, 2, ...
            pool_peak_bytes=pool.stats.peak_bytes,
            pool_budget_bytes=pool.budget_bytes,
            evictions=pool.stats.evictions,
            kv_cache_bytes=result.kv_bytes,
            timings={k: round(v, 4) for k, v in c.timings.items()},
        )
        if self._resumed_chunks:  # the figures cover the whole video, these chunks' work included
            stats["resumed_chunks"] = self._resumed_chunks
        self._result = GenerationResult(
            frames=frames,
            wall_s=wall,
            steps=r.steps,
            guidance=r.guidance,
            stats=stats,
            recompute_map=recompute_map_frames(c, grid, cache.pool.tile),
        )
        return self._result


class PlanGeneration:
    """A whole :class:`VideoPlan` (a request and its extensions) as one steppable generation.

    Starts from ``snapshot`` (of the plan itself or of a prefix of it: an interrupted
    generation is resumed, a finished one extended) or, without one, from nothing; then
    runs the remaining segments in turn, each extending the one before. This is how a
    server continues a stored session, or regenerates a lost one from its plan, with the
    same frames either way. Same interface as :class:`StepwiseGeneration` (``step``,
    ``done``, ``units_done``/``total_units``, ``result``, ``snapshot``, ``close``).
    """

    def __init__(
        self,
        pipe,
        plan: VideoPlan,
        snapshot: GenerationSnapshot | None = None,
        cache: CacheConfig | None = None,
        pool: ActivationPool | None = None,
        request_id: str | None = None,
    ) -> None:
        self.pipe, self.plan, self.cache, self.pool = pipe, plan, cache, pool
        self.request_id = request_id or uuid.uuid4().hex
        start = 0
        if snapshot is not None:
            n = len(snapshot.plan.segments)
            if snapshot.plan.prefix(n) != plan.prefix(n) or n > len(plan.segments):
                raise ValueError("the snapshot is not of this video (its plan is not a prefix of the plan)")
            start = snapshot.chunks_done
        t, block = pipe.vae_scale_factor_temporal, pipe.causal_block_size
        self.total_units = (chunks_of(plan.num_frames, t, block) - start) * (plan.steps + 1)
        self.units_done = 0
        self._segment = len(snapshot.plan.segments) if snapshot is not None else 1
        self._last = snapshot
        if snapshot is None:
            self.gen = StepwiseGeneration(pipe, plan.prefix(1).resolved(), cache, pool, self.request_id)
        elif not snapshot.done or self._segment == len(plan.segments):
            self.gen = StepwiseGeneration.resume(pipe, snapshot, cache, pool, self.request_id)
        else:
            self.gen = None
        self.resumed_chunks = start
        self._advance_segments()

    @property
    def done(self) -> bool:
        return self.gen.done and self._segment >= len(self.plan.segments)

    def _advance_segments(self) -> None:
        # a finished segment with more to come: extend it (an extension that adds no chunk,
        # e.g. frames the padding already holds, is done as soon as it is made)
        while (self.gen is None or self.gen.done) and self._segment < len(self.plan.segments):
            snap = self._last if self.gen is None else self.gen.snapshot()
            if self.gen is not None:
                self.gen.close()
            seg = self.plan.segments[self._segment]
            self._segment += 1
            self.gen = StepwiseGeneration.extend(
                self.pipe, snap, seg.prompt, seg.num_frames, seg.seed, self.cache, self.pool, self.request_id
            )

    def step(self) -> str:
        """One unit (see :meth:`StepwiseGeneration.step`); ``"commit"`` ends a chunk."""
        kind = self.gen.step()
        self.units_done += 1
        self._advance_segments()
        return kind

    def _runs(self) -> list:
        return self.gen._runs()

    def _end_unit(self, outcome):
        kind = self.gen._end_unit(outcome)
        self.units_done += 1
        self._advance_segments()
        return kind

    @property
    def chunks_done(self) -> int:
        return self.gen.run.chunks_done

    @property
    def chunks_denoised(self) -> int:
        return self.gen.run.chunks_denoised

    @property
    def position(self) -> tuple[int, int]:
        """(chunk, unit in chunk) of the next unit, as :attr:`StepwiseGeneration.position`."""
        return self.gen.position

    @property
    def num_chunks(self) -> int:
        return chunks_of(self.plan.num_frames, self.pipe.vae_scale_factor_temporal, self.pipe.causal_block_size)

    def frames_so_far(self) -> np.ndarray:
        return self.gen.frames_so_far()

    def snapshot(self, include_kv: bool = True) -> GenerationSnapshot:
        return self.gen.snapshot(include_kv)

    def close(self) -> None:
        self.gen.close()

    def result(self) -> GenerationResult:
        if not self.done:
            raise RuntimeError(f"generation unfinished: {self.units_done}/{self.total_units} units")
        result = self.gen.result()
        if self.resumed_chunks:
            result.stats["resumed_chunks"] = self.resumed_chunks
        else:
            result.stats.pop("resumed_chunks", None)  # regenerated from nothing: every chunk computed here
        return result


def step_together(gens: list, max_batch: int | None = None) -> list[str | BaseException]:
    """Advance every generation (:class:`StepwiseGeneration` or :class:`PlanGeneration`,
    none done) by one unit, as ``gen.step()`` would, but with the transformer calls of all
    of them of the same chunk shape stacked into one call per ``max_batch`` samples (see
    ``runtime.chunked.run_units``). Returns each one's unit kind, or the exception that
    ended it (that generation is then closed, as ``step`` closes it; the others go on).
    The frames equal those of ``step`` up to float reassociation in the batched matrix
    products (see tests/test_stepwise.py for the measured tolerance)."""
    from motioncache_vllm.runtime.chunked import run_units

    with torch.inference_mode():
        runs = [gen._runs()[0] for gen in gens]
        outcomes = run_units(runs, max_batch)
        results: list[str | BaseException] = []
        for gen, outcome in zip(gens, outcomes):
            try:
                results.append(gen._end_unit(outcome))
            except Exception as exc:  # noqa: BLE001  (this generation alone; it is closed)
                results.append(exc)
    return results
