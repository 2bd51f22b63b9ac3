"""One fleet worker: a Ray actor hosting one vLLM engine with the MotionCache plugin in-process.

The engine is the one ``motioncache serve`` runs (same model folder, same engine flags,
parsed by vLLM's own ``EngineArgs``), built in-process in the actor
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the actor's pid is the process that computes:
killing it kills the engine and nothing is left behind. vLLM's CPU platform refuses its
own Ray executor, which is why Ray sits above the engines here (one engine per actor; on
GPUs the actor asks Ray for ``num_gpus=1`` and vLLM uses the device Ray assigned).

Threads of the actor::

    Ray's asyncio loop ── run(order) ──▶ inbox ──▶ engine thread: add_request, engine.step()
          ▲                                            │ VideoWorker hooks (per chunk commit)
          └──────── events (chunk checkpoints, done) ◀─┘ (loop.call_soon_threadsafe)

The engine thread alone touches the engine; every running request advances one unit per
engine step (the step-level interleaving of the single server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from motioncache_vllm.fleet.messages import (
    Checkpoint,
    WorkerInfo,
    WorkerSpec,
    WorkEvent,
    WorkOrder,
    decode,
    encode,
)

logger = logging.getLogger(__name__)

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the actor's own process
    "HF_HUB_OFFLINE": "1",
}


def engine_kwargs(model_dir: str, engine_argv: list[str]) -> dict:
    """``vllm serve`` engine flags -> the non-default ``EngineArgs`` fields, as ``vllm.LLM`` takes
    them (vLLM's own parser: the fleet's engines get exactly what ``motioncache serve`` passes)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from motioncache_vllm.vllm_plugin.cli_args import install_cache_policy_flag

    install_cache_policy_flag()  # --cache-policy, as the plugin adds it to `vllm serve`
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser(prog="motioncache-fleet-worker"))
    args = EngineArgs.from_cli_args(parser.parse_args(["--model", model_dir, *engine_argv]))
    defaults = EngineArgs.from_cli_args(parser.parse_args(["--model", model_dir]))
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EngineArgs)
        if f.init and getattr(args, f.name) != getattr(defaults, f.name) or f.name == "model"
    }


def last_chunk_motion(gen) -> float:
    """Motion of a generation's last finished chunk: the mean absolute change between its
    consecutive latent frames (the frame before the chunk included), relative to the mean
    latent magnitude; ~0 for a static video. ``gen``: a ``runtime.stepwise.PlanGeneration``."""
    import torch

    run = gen.gen.run
    end = run.chunks_done * run.frames_per_chunk
    if end < 2:
        return 0.0
    with torch.inference_mode():
        x = run.latents[:, :, max(end - run.frames_per_chunk - 1, 0) : end].float()
        return float(x.diff(dim=2).abs().mean() / (x.abs().mean() + 1e-8))


@dataclass
class _Running:
    """A request in this worker's engine, as the engine thread tracks it."""

    order: WorkOrder
    events: asyncio.Queue
    chunks: int = 0
    job: object = None
    plan: object = None  # the finished video's VideoPlan


@dataclass
class _Stats:
    videos_done: int = 0
    running: dict = field(default_factory=dict)


class EngineWorker:
    """The actor class (``ray.remote(EngineWorker).options(...)``, see ``fleet.router``)."""

    def __init__(self, spec: bytes) -> None:
        import torch

        self.spec = spec_ = decode(spec, WorkerSpec)
        os.environ.update({**ENGINE_ENV, **spec_.env})
        torch.set_num_threads(spec_.num_threads)  # before vLLM's CPU worker freezes the setting
        from vllm import LLM

        from motioncache_vllm.vllm_plugin.launcher import fix_vllm_version_lookup

        fix_vllm_version_lookup()
        self.llm = LLM(**engine_kwargs(spec_.model_dir, spec_.engine_argv))
        self.io = self.llm.pooling_io_processors["plugin"].io_processor
        [self.video_worker] = self.llm.apply_model(lambda model: model.pooler.worker)
        self.video_worker.start_listeners.append(self._on_job_start)
        self.video_worker.chunk_listeners.append(self._on_chunk_done)
        self.stats = _Stats()
        self._by_ticket: dict[str, _Running] = {}
        self._inbox: queue.Queue = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._engine_loop, name="motioncache-engine", daemon=True)
        self._thread.start()

    # -- Ray methods -------------------------------------------------------------------------
    async def run(self, order_bytes: bytes, checkpoint: bytes | None = None) -> AsyncIterator[bytes]:
        """Serve one attempt of a request: yields msgpack ``WorkEvent``s (``started``, per
        finished chunk ``chunk`` then its ``Checkpoint``, then ``done`` or ``error``).

        With ``checkpoint`` (msgpack ``Checkpoint``) or ``order.plan`` the request goes
        through the engine as a continuation (``VideoRequest.continue_from``) of the
        checkpoint's state, which this worker's session store holds until the job starts:
        the rest of an interrupted request, or a stored video continued; without a state,
        the plan is made from nothing (the same frames)."""
        from motioncache_vllm.runtime.snapshot import GenerationSnapshot
        from motioncache_vllm.vllm_plugin.messages import Continuation, decode_request

        self._loop = asyncio.get_running_loop()
        order = decode(order_bytes, WorkOrder)
        events: asyncio.Queue = asyncio.Queue()
        running = _Running(order, events)
        ticket = f"{order.request_id}/{order.attempt}"
        try:
            request = msgspec.structs.replace(decode_request(order.request), ticket=ticket)
            snapshot = None
            if checkpoint is not None:
                resume = decode(checkpoint, Checkpoint)
                snapshot = GenerationSnapshot.from_bytes(resume.state)
                running.chunks = resume.chunk
            plan = order.plan or (snapshot.plan if snapshot is not None else None)
            if plan is not None:
                last = plan.segments[-1]
                request = msgspec.structs.replace(
                    request,
                    prompt=last.prompt,
                    num_frames=last.num_frames,
                    seed=last.seed,
                    continue_from=Continuation(session=ticket, plan=plan),
                )
                if snapshot is not None:  # taken by the job when it starts (see _on_job_start)
                    self.video_worker.sessions.put(ticket, snapshot, snapshot.nbytes)
            prompt = self.io.pre_process(self.io.parse_data(msgspec.json.encode(request)))
        except Exception as exc:  # noqa: BLE001  (the front validated it: a mismatch of versions)
            self.video_worker.sessions.pop(ticket)
            yield encode(WorkEvent(kind="error", worker_id=self.spec.worker_id, error=f"{type(exc).__name__}: {exc}"))
            return
        self.stats.running[ticket] = running
        self._by_ticket[ticket] = running
        self._inbox.put(("add", ticket, prompt))
        try:
            while True:
                item = await events.get()
                if isinstance(item, bytes):  # a checkpoint, after its "chunk" event
                    yield item
                    continue
                yield encode(item)
                if item.kind in ("done", "error"):
                    return
        finally:
            self.stats.running.pop(ticket, None)
            self._by_ticket.pop(ticket, None)
            self.video_worker.sessions.pop(ticket)  # if the job never started
            self._inbox.put(("abort", ticket, None))  # a no-op for a finished request

    async def info(self) -> bytes:
        """This worker's ``WorkerInfo`` (msgpack)."""
        import ray
        import torch

        ctx = ray.get_runtime_context()
        pool = self.video_worker.pool
        return encode(
            WorkerInfo(
                worker_id=self.spec.worker_id,
                node_id=ctx.get_node_id(),
                node_ip=ray.util.get_node_ip_address(),
                pid=os.getpid(),
                running=len(self.stats.running),
                pool_in_use_bytes=pool.stats.in_use_bytes,
                pool_peak_bytes=pool.stats.peak_bytes,
                pool_budget_bytes=pool.budget_bytes,
                torch_threads=torch.get_num_threads(),
                gpus=[str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
                videos_done=self.stats.videos_done,
                engine_steps=self.video_worker.engine_steps,
            )
        )

    # -- engine thread -----------------------------------------------------------------------
    def _engine_loop(self) -> None:
        from vllm.pooling_params import PoolingParams

        core = self.llm.llm_engine
        while True:
            try:
                block = not core.has_unfinished_requests()
                while True:
                    op, ticket, prompt = self._inbox.get(block=block)
                    block = False
                    if op == "add":
                        core.add_request(ticket, prompt, self.io.merge_pooling_params(PoolingParams()))
                    elif op == "abort":
                        core.abort_request([ticket])
            except queue.Empty:
                pass
            try:
                outputs = core.step()
            except BaseException:  # noqa: BLE001
                # the engine is broken, not the requests: end the process, so that Ray restarts the
                # actor and the front resumes its requests elsewhere, as for any dead worker
                logger.exception("engine step failed; the worker exits")
                os._exit(70)
            for out in outputs:
                if out.finished:
                    self._finish(out)

    def _finish(self, out) -> None:
        running = self._by_ticket.get(out.request_id)
        if running is None:
            return  # aborted meanwhile
        try:
            response = self.io.post_process([out], request_id=running.order.request_id)
            event = WorkEvent(
                kind="done", worker_id=self.spec.worker_id, chunk=running.chunks, response=response, plan=running.plan
            )
            self.stats.videos_done += 1
        except Exception as exc:  # noqa: BLE001  (VideoGenerationError: the request failed, not the worker)
            event = WorkEvent(kind="error", worker_id=self.spec.worker_id, error=str(exc))
        self._emit(running, event)

    def _emit(self, running: _Running, event: WorkEvent) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(running.events.put_nowait, event)

    # -- VideoWorker listeners (engine thread, inside engine.step) ----------------------------
    def _on_job_start(self, job) -> None:
        running = self._by_ticket.get(job.request.ticket or "") if job.request is not None else None
        if running is None:
            return  # not a fleet request
        running.job = job
        self.video_worker.sessions.pop(job.request.ticket)  # the job holds its starting state now
        self._emit(running, WorkEvent(kind="started", worker_id=self.spec.worker_id, chunk=job.gen.chunks_done))

    def _on_chunk_done(self, job, chunks: int) -> None:
        running = self._by_ticket.get(job.request.ticket or "") if job.request is not None else None
        if running is None:
            return
        running.chunks = chunks
        motion = 0.0
        if job.gen.done:
            running.plan = job.gen.plan
            motion = last_chunk_motion(job.gen)
        snapshot = job.gen.snapshot(include_kv=True)
        state = snapshot.to_bytes()
        checkpoint = encode(Checkpoint(chunk=chunks, units_done=job.gen.units_done, state=state))
        self._emit(
            running,
            WorkEvent(
                kind="chunk",
                worker_id=self.spec.worker_id,
                chunk=chunks,
                has_checkpoint=True,
                nbytes=len(state),
                units_done=job.gen.units_done,
                units_total=job.gen.total_units,
                chunks_total=job.gen.num_chunks,
                motion=motion,
            ),
        )
        self._emit(running, checkpoint)
