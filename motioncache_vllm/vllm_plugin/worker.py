"""Worker side of the video model, free of vLLM: one shared pool, request -> payload.

The vLLM model class (``model.py``) owns one :class:`VideoWorker`; its pooler hands it the
prompt token ids of each finished request.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from typing import Any, Callable, Mapping

import msgspec
import numpy as np
import torch

from motioncache_vllm.config import CacheConfig
from motioncache_vllm.vllm_plugin.messages import (
    EngineCacheSettings,
    VideoPayload,
    VideoRequest,
    payload_to_tensor,
    request_from_token_ids,
)

logger = logging.getLogger(__name__)


class VideoJob:
    """One engine request on the worker: its generation (a ``runtime.stepwise.PlanGeneration``),
    or the error that ended it."""

    def __init__(
        self,
        request_id: str,
        gen=None,
        cache: CacheConfig | None = None,
        error: str | None = None,
        request: VideoRequest | None = None,
    ):
        self.request_id, self.gen, self.cache, self.error, self.request = request_id, gen, cache, error, request
        self.engine_steps: list[int] = []  # engine step index of each unit, in order
        # seconds over the engine steps this job was in: the whole steps, their units (the
        # transformer work of every job of the step), and first step start -> last step end
        self.step_s = self.units_s = 0.0
        self.first_step_t: float | None = None
        self.last_step_t = 0.0
        self.frames_sent = 0  # streaming: frames already published
        self.chunks_streamed = 0  # streaming: denoised chunks whose frames were published

    @property
    def done(self) -> bool:
        return self.error is not None or self.gen.done


class VideoWorker:
    """The pipeline, the engine's cache settings and the one pool every request shares.

    Requests are advanced step by step: every engine step calls :meth:`engine_step`, which
    runs one unit (one denoising step of every CFG branch, or a chunk commit) of every
    running request, so concurrent requests interleave; the transformer calls of those units
    that share a chunk shape run as one batched call (``serve_batch_steps``, default off). ``records`` keeps
    ``(engine_step, request_id, unit)`` of every unit run (the last ``MAX_RECORDS``).
    """

    MAX_RECORDS = 100_000

    def __init__(self, pipeline: str, additional_config: Mapping[str, Any] | None) -> None:
        from motioncache_vllm.limits import ServeSettings, geometry_of
        from motioncache_vllm.models.loading import load_pipeline
        from motioncache_vllm.runtime.request import make_pool

        from motioncache_vllm.blocks.sessions import SessionStore
        from motioncache_vllm.vllm_plugin.events import WorkerChannel

        self.settings = EngineCacheSettings.from_additional_config(additional_config)
        serve = ServeSettings.from_additional_config(additional_config)
        self.memory_budget_bytes = serve.memory_budget_bytes(self.settings.pool.pool_mib)
        # one transformer call per engine step for all running requests' units of one shape
        self.batch_steps, self.max_batch = serve.serve_batch_steps, serve.serve_max_batch
        self.pipe = load_pipeline(pipeline)
        self.geometry = geometry_of(self.pipe)
        self.live: set[str] = set()  # request ids of open generations (stats: live_requests)
        # one memory budget for the whole worker, whatever the number of requests
        self.pool = make_pool(self.pipe, self.settings.pool)
        self.engine_steps = 0
        self.records: list[tuple[int, str, int]] = []
        # listeners of a serving layer above the engine (the Ray fleet's per-chunk checkpoints),
        # called in the engine's thread: after a job's generation is set up (a listener may
        # replace ``job.gen``, e.g. by one resumed from a snapshot), and after every chunk
        # commit (``chunks`` = the job's finished chunks; the generation is between chunks)
        self.start_listeners: list[Callable[[VideoJob], None]] = []
        self.chunk_listeners: list[Callable[[VideoJob, int], None]] = []
        mib = self.settings.engine.session_mib
        # finished videos' state (GenerationSnapshot), by job id: what an extension continues
        self.sessions: SessionStore = SessionStore(None if mib is None else int(mib * 2**20))
        # progress / streamed frames to the API server; its commands (None: no server listening)
        self.channel = WorkerChannel.from_env(self._command)

    # -- per engine step -------------------------------------------------------------------
    def engine_step(self, states: list, prompts: list[torch.Tensor], finished: list[bool]) -> list:
        """One engine step: advance every request by one unit; the payload tensor of each
        request whose prompt ends this step, None for the others. ``states`` are vLLM's
        per-request ``PoolingStates`` (kept across steps): the job rides on them."""
        step = self.engine_steps
        self.engine_steps += 1
        t0 = time.perf_counter()
        jobs = []
        for state, ids in zip(states, prompts):
            job = getattr(state, "motioncache_job", None)
            if job is None:
                job = self.start(ids)
                state.motioncache_job = job
                if job.gen is not None:
                    # an aborted request's states are dropped unfinished: free its blocks then
                    weakref.finalize(state, self._abandon, job.gen, job.request_id)
            jobs.append(job)
        t1 = time.perf_counter()
        self._advance_all([job for job in jobs if not job.done], step)
        # a prompt shorter than the work: finish in this step (those jobs still batched together)
        ending = [job for job, last in zip(jobs, finished) if last]
        while any(not job.done for job in ending):
            self._advance_all([job for job in ending if not job.done], step)
        t2 = time.perf_counter()
        for job in jobs:
            job.first_step_t = t0 if job.first_step_t is None else job.first_step_t
            job.last_step_t = t2
            job.step_s += t2 - t0
            job.units_s += t2 - t1
        outputs = []
        for state, job, last in zip(states, jobs, finished):
            if last:
                state.motioncache_job = None
                outputs.append(self._output(job))
            else:
                outputs.append(None)
        return outputs

    def start(self, token_ids: torch.Tensor) -> VideoJob:
        """Decode the request and set up its generation (prompt encoding, initial noise)."""
        from motioncache_vllm.runtime.stepwise import PlanGeneration

        request_id = uuid.uuid4().hex
        try:
            request = request_from_token_ids(token_ids)
        except (ValueError, msgspec.DecodeError) as exc:
            # also the path of vLLM's start-up dummy run, whose prompts are all zeros
            return VideoJob(request_id, error=f"undecodable video request: {exc}")
        try:
            from motioncache_vllm.vllm_plugin.messages import check_video_request

            # the front end checked it too; a request reaching the worker another way (or
            # with another budget) is refused here, before anything large is allocated
            check_video_request(request, self.geometry, self.memory_budget_bytes, self.settings.pool.pool_mib)
            cache = self.settings.cache_config(request.cache)
            plan, snapshot = self._plan(request)
            gen = PlanGeneration(self.pipe, plan, snapshot, cache=cache, pool=self.pool, request_id=request_id)
        except Exception as exc:  # noqa: BLE001  (reported to the client, the engine keeps serving)
            logger.exception("video request failed")
            return VideoJob(request_id, error=f"{type(exc).__name__}: {exc}", request=request)
        job = VideoJob(request_id, gen=gen, cache=cache, request=request)
        self.live.add(request_id)
        try:
            for listener in self.start_listeners:
                listener(job)
        except Exception as exc:  # noqa: BLE001  (e.g. an unusable snapshot: this request fails)
            logger.exception("video request failed")
            self._abandon(job.gen, request_id)
            return VideoJob(request_id, error=f"{type(exc).__name__}: {exc}", request=request)
        return job

    def _plan(self, request: VideoRequest):
        """(plan, stored snapshot to start from or None) of a request."""
        from motioncache_vllm.runtime.request import resolve
        from motioncache_vllm.runtime.snapshot import VideoPlan

        if request.continue_from is None:
            return VideoPlan.of(resolve(self.pipe, request.generation_request())), None
        plan = request.continue_from.plan
        snapshot = self.sessions.get(request.continue_from.session)
        if snapshot is not None:
            n = len(snapshot.plan.segments)
            if n > len(plan.segments) or snapshot.plan.prefix(n) != plan.prefix(n):
                logger.warning(
                    "session %s does not match the request's plan: regenerating", request.continue_from.session
                )
                snapshot = None
        return plan, snapshot

    def _command(self, command) -> None:
        if command.drop_session is not None:
            self.sessions.pop(command.drop_session)

    def _publish(self, job: VideoJob) -> None:
        """Progress of ``job`` to the API server; with ``stream``, the frames of a chunk as soon
        as its last denoising step ran (one unit before its commit pass)."""
        job_id = job.request.job if job.request is not None else None
        if self.channel is None or job_id is None:
            return
        from motioncache_vllm.vllm_plugin.events import VideoEvent

        gen = job.gen
        event = VideoEvent(
            job=job_id,
            units_done=gen.units_done,
            units_total=gen.total_units,
            chunks_done=gen.chunks_done,
            chunks_total=gen.num_chunks,
        )
        if job.request.stream and gen.chunks_denoised > job.chunks_streamed:
            job.chunks_streamed = gen.chunks_denoised
            frames = np.ascontiguousarray(gen.frames_so_far(), dtype=np.uint8)
            new = frames[job.frames_sent :]
            if len(new):
                event.frame_start, event.frames, event.shape = job.frames_sent, new.tobytes(), new.shape
                job.frames_sent = len(frames)
        self.channel.publish(event)

    def _advance(self, job: VideoJob, step: int) -> None:
        unit = job.gen.units_done
        try:
            kind = job.gen.step()  # closes the generation (frees its blocks) on an error
        except Exception as exc:  # noqa: BLE001  (raising would fail every running request)
            kind = exc
        self._unit_done(job, step, unit, kind)

    def _advance_all(self, jobs: list[VideoJob], step: int) -> None:
        """One unit of every job; with ``serve_batch_steps`` their transformer calls of one
        chunk shape run as one batched call (``runtime.stepwise.step_together``)."""
        if not self.batch_steps:
            for job in jobs:
                self._advance(job, step)
            return
        from motioncache_vllm.runtime.stepwise import step_together

        units = [job.gen.units_done for job in jobs]
        for job, unit, kind in zip(jobs, units, step_together([job.gen for job in jobs], self.max_batch)):
            self._unit_done(job, step, unit, kind)

    def _unit_done(self, job: VideoJob, step: int, unit: int, kind: str | BaseException) -> None:
        """Bookkeeping of a unit run (its generation was closed if it failed)."""
        if not isinstance(kind, BaseException):
            try:
                self._publish(job)
            except Exception as exc:  # noqa: BLE001
                kind = exc
        if isinstance(kind, BaseException):
            logger.error("video request failed", exc_info=kind)
            job.error = f"{type(kind).__name__}: {kind}"
            job.gen.close()
            return
        job.engine_steps.append(step)
        self.records.append((step, job.request_id, unit))
        if kind == "commit":
            for listener in self.chunk_listeners:
                listener(job, job.gen.chunks_done)
        if len(self.records) > self.MAX_RECORDS:
            del self.records[: len(self.records) - self.MAX_RECORDS]

    def _output(self, job: VideoJob) -> torch.Tensor:
        """The pooler output of a finished job. Every failure here (decoding, copying the
        frames, encoding the payload, MemoryError included) fails this request alone: it
        gets a small error payload, and the engine step goes on for the others."""
        try:
            return payload_to_tensor(self._payload(job))
        except Exception as exc:  # noqa: BLE001
            logger.exception("video request failed while building its answer")
            return payload_to_tensor(VideoPayload(error=f"{type(exc).__name__}: {exc}"))
        finally:
            self._finish(job)

    def _finish(self, job: VideoJob) -> None:
        self._abandon(job.gen, job.request_id)

    def _abandon(self, gen, request_id: str) -> None:
        """Close a generation (idempotent: frees its pool blocks, drops its hooks)."""
        if gen is not None:
            gen.close()
        self.live.discard(request_id)

    def _payload(self, job: VideoJob) -> VideoPayload:
        if job.error is None:
            try:
                result = job.gen.result()
            except Exception as exc:  # noqa: BLE001
                logger.exception("video request failed")
                job.error = f"{type(exc).__name__}: {exc}"
        if job.error is not None:
            return VideoPayload(error=job.error)
        if job.request is not None and job.request.job is not None and self.sessions.budget_bytes != 0:
            try:  # the finished video's state, for extensions (a store too small just keeps nothing)
                snapshot = job.gen.snapshot()
                self.sessions.put(job.request.job, snapshot, snapshot.nbytes)
            except Exception:  # noqa: BLE001  (an extension then regenerates; the video is fine)
                logger.exception("could not keep the state of video %s", job.request.job)
        frames = np.ascontiguousarray(result.frames, dtype=np.uint8)
        stats = dict(
            result.stats,
            policy=job.cache.policy.name,
            wall_s=round(result.wall_s, 4),
            steps=result.steps,
            guidance=result.guidance,
            engine_steps=list(job.engine_steps),
            # where the worker's time went while this job lived (the engine's overhead between
            # steps = span - step; the steps' own overhead = step - units)
            engine_span_s=round(job.last_step_t - (job.first_step_t or job.last_step_t), 4),
            engine_step_s=round(job.step_s, 4),
            engine_units_s=round(job.units_s, 4),
        )
        # the shared pool as of now, for the API process's /metrics (see metrics.py)
        stats.update(pool_in_use_bytes=self.pool.stats.in_use_bytes, pool_evictions_total=self.pool.stats.evictions)
        # the CPU worker pins its torch threads; a fair library-path comparison needs the number
        stats["torch_threads"] = torch.get_num_threads()
        stats["live_requests"] = len(self.live - {job.request_id})  # other generations still open
        return VideoPayload(frames=frames.tobytes(), shape=frames.shape, stats=stats, plan=job.gen.plan)

    def run(self, token_ids: torch.Tensor) -> VideoPayload:
        """Generate the request encoded in ``token_ids`` to the end (all in one call)."""
        job = self.start(token_ids)
        step = self.engine_steps
        self.engine_steps += 1
        while not job.done:
            self._advance(job, step)
        try:
            return self._payload(job)
        finally:
            self._finish(job)
