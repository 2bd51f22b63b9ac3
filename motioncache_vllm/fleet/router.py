"""The fleet's router: N engine workers (Ray actors), routing, retries and resumption.

::

    generate(request) ─▶ pick a worker: ready, fewest running requests, most free pool bytes
        │                 (waits while every worker is at its engine's max_num_seqs)
        ├─ stream events: "started", per chunk "chunk" + its checkpoint (fetched and put
        │  again by the router, which owns it: it outlives the worker and its node), then
        │  "done"/"error"
        └─ the worker dies (RayActorError) ─▶ next attempt on another ready worker, resumed
           from the last checkpoint (from scratch without one); at most ``max_attempts``
           attempts, then FleetUnavailable. Ray restarts the dead actor (``max_restarts``);
           a watcher marks it ready again once it answers.

An ``error`` event is a failure of the request itself (the engine refused or failed it):
it is not retried, as the single server would not retry it either.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from motioncache_vllm.fleet.messages import WorkerInfo, WorkerSpec, WorkerState, WorkEvent, WorkOrder, decode, encode
from motioncache_vllm.vllm_plugin.messages import Continuation

logger = logging.getLogger(__name__)


class FleetConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the fleet is laid out (``motioncache serve --workers N``)."""

    workers: int = 2
    """Engine workers (Ray actors), one engine each."""
    cpus_per_worker: float = 1.0
    """Ray CPUs per worker; also its torch threads (rounded down, at least 1)."""
    gpus_per_worker: float | None = None
    """Ray GPUs per worker; None: 1 where the cluster has GPUs, else 0."""
    slots_per_worker: int = 4
    """Requests a worker's engine runs at once (its ``--max-num-seqs``); more wait in the router."""
    max_attempts: int = 3
    """Attempts per request across worker deaths (the first included)."""
    max_restarts: int = 4
    """Times Ray restarts a dead worker actor (-1: forever)."""
    ready_timeout_s: float = 600.0
    """How long a request waits for a worker to be ready before it fails."""
    info_interval_s: float = 1.0
    """Period of the router's poll of every worker's WorkerInfo (pool bytes, liveness)."""
    session_budget_mib: float | None = 256.0
    """Fleet-wide budget of finished videos' states (what an extension continues), held in
    Ray's object store; past it states are evicted in ``session_eviction`` order (their videos
    are then made again from their plans when extended). None: unbounded; 0: keep none."""
    session_eviction: Literal["score", "lru"] = "score"
    """``score``: evict the state least worth keeping, ``(1 + hits) * (0.05 + motion of the
    video's last chunk) / (1 + age / session_half_life_s)`` (``blocks.eviction.SessionScoreOrder``:
    a static video is cheap to make again under MotionCache, a moving one is not);
    ``lru``: least recently used first."""
    session_half_life_s: float = 600.0
    """``score``: seconds since a state's last use at which its score has halved."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.session_half_life_s <= 0:
            raise ValueError(f"session_half_life_s must be > 0, got {self.session_half_life_s}")
        if self.max_attempts < 1 or self.slots_per_worker < 1:
            raise ValueError("max_attempts and slots_per_worker must be >= 1")


class FleetError(RuntimeError):
    """A request failed on its worker (the engine's error; not retried)."""


class FleetUnavailable(RuntimeError):
    """No worker could finish the request: every attempt's worker died, or none was ready in time."""


@dataclass
class WorkerHandle:
    """The router's view of one worker."""

    worker_id: int
    actor: Any
    state: WorkerState = "starting"
    running: set = field(default_factory=set)
    info: WorkerInfo | None = None
    deaths: int = 0
    last_error: str | None = None

    def free_pool_bytes(self) -> float:
        if self.info is None or self.info.pool_budget_bytes is None:
            return math.inf
        return self.info.pool_budget_bytes - self.info.pool_in_use_bytes


@dataclass
class Attempt:
    """What the router knows of a request while it runs (for retries and /v1/workers)."""

    request_id: str
    worker_id: int | None = None
    attempt: int = 0
    chunks: int = 0
    checkpoint: Any = None  # ObjectRef of the last per-chunk checkpoint (owned and put by the router)
    resumed_chunks: list = field(default_factory=list)  # per retry: the chunk it resumed at
    recoveries_s: list = field(default_factory=list)


@dataclass
class FleetStats:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    unavailable: int = 0
    retries: int = 0
    resumed_from_checkpoint: int = 0
    worker_deaths: int = 0
    continuations: int = 0
    sessions_regenerated: int = 0
    """Continuations whose stored state was evicted: the whole video was made again."""
    recoveries_s: list = field(default_factory=list)
    """Seconds from a worker's death (seen by the router) to the request running again elsewhere."""


class Fleet:
    """N engine workers behind one ``generate``; call :meth:`start` inside a running event loop."""

    def __init__(self, spec: WorkerSpec, config: FleetConfig) -> None:
        self.spec, self.config = spec, config
        self.workers: list[WorkerHandle] = []
        self.stats = FleetStats()
        self.attempts: dict[str, Attempt] = {}
        from motioncache_vllm.blocks.eviction import LRUOrder, SessionScoreOrder
        from motioncache_vllm.blocks.sessions import SessionStore

        mib = config.session_budget_mib
        order = (
            SessionScoreOrder(half_life_s=config.session_half_life_s)
            if config.session_eviction == "score"
            else LRUOrder()
        )
        # video id -> ObjectRef of its finished state (Checkpoint bytes), owned by this process
        self.sessions: SessionStore = SessionStore(None if mib is None else int(mib * 2**20), eviction=order)
        self._changed: asyncio.Condition | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    def placement(self) -> dict[str, float]:
        """Ray resources of one worker: its CPUs, and one GPU per worker where the cluster has GPUs."""
        import ray

        gpus = self.config.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        return {"num_cpus": self.config.cpus_per_worker, "num_gpus": gpus}

    async def start(self) -> None:
        """Create the worker actors and wait until every one has built its engine."""
        import ray

        from motioncache_vllm.fleet.worker import EngineWorker

        self._changed = asyncio.Condition()
        threads = max(int(self.config.cpus_per_worker), 1)
        actor_class = ray.remote(EngineWorker)
        for i in range(self.config.workers):
            spec = msgspec.structs.replace(self.spec, worker_id=i, num_threads=threads)
            actor = actor_class.options(
                **self.placement(),
                max_restarts=self.config.max_restarts,
                max_task_retries=0,
                name=f"motioncache-worker-{i}-{uuid.uuid4().hex[:6]}",
            ).remote(encode(spec))
            self.workers.append(WorkerHandle(i, actor))
        results = await asyncio.gather(*(self._refresh(w) for w in self.workers), return_exceptions=True)
        failed = [(w, r) for w, r in zip(self.workers, results) if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"worker {failed[0][0].worker_id} failed to start: {failed[0][1]}")
        self._spawn(self._poll_info())

    async def stop(self) -> None:
        import ray

        for task in list(self._tasks):
            task.cancel()
        for w in self.workers:
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001  (already gone)
                pass
            w.state = "dead"

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- worker state ------------------------------------------------------------------------
    async def _refresh(self, worker: WorkerHandle, timeout: float | None = None) -> WorkerInfo:
        info = decode(await asyncio.wait_for(worker.actor.info.remote(), timeout), WorkerInfo)
        worker.info = info
        if worker.state in ("starting", "restarting"):
            worker.state = "ready"
            await self._notify()
        return info

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _poll_info(self) -> None:
        while True:
            await asyncio.sleep(self.config.info_interval_s)
            for w in self.workers:
                if w.state == "ready":
                    try:
                        await self._refresh(w, timeout=30)
                    except Exception as exc:  # noqa: BLE001  (dead or restarting: the death path)
                        await self._worker_died(w, exc)

    async def _worker_died(self, worker: WorkerHandle, exc: BaseException) -> None:
        if worker.state not in ("ready", "starting"):
            return  # already known
        worker.deaths += 1
        worker.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self.stats.worker_deaths += 1
        restarts = self.config.max_restarts
        worker.state = "restarting" if restarts < 0 or worker.deaths <= restarts else "dead"
        logger.warning("worker %d died (%s); %s", worker.worker_id, worker.last_error, worker.state)
        if worker.state == "restarting":
            self._spawn(self._await_restart(worker))
        await self._notify()

    async def _await_restart(self, worker: WorkerHandle) -> None:
        """Poll a restarting actor until Ray has rebuilt it (its engine start-up included)."""
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            try:
                await self._refresh(worker, timeout=self.config.ready_timeout_s)
                return
            except Exception:  # noqa: BLE001  (still restarting)
                await asyncio.sleep(1.0)
        worker.state = "dead"
        await self._notify()

    def _pick(self, avoid: set[int]) -> WorkerHandle | None:
        ready = [w for w in self.workers if w.state == "ready" and len(w.running) < self.config.slots_per_worker]
        if not ready:
            return None
        preferred = [w for w in ready if w.worker_id not in avoid] or ready
        return min(preferred, key=lambda w: (len(w.running), -w.free_pool_bytes(), w.worker_id))

    async def _acquire(self, avoid: set[int], request_id: str) -> WorkerHandle:
        deadline = time.monotonic() + self.config.ready_timeout_s
        async with self._changed:
            while True:
                worker = self._pick(avoid)
                if worker is not None:
                    worker.running.add(request_id)
                    return worker
                if all(w.state == "dead" for w in self.workers):
                    raise FleetUnavailable("every worker of the fleet is dead")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FleetUnavailable(f"no worker was ready within {self.config.ready_timeout_s:.0f}s")
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def _release(self, worker: WorkerHandle, request_id: str) -> None:
        worker.running.discard(request_id)
        await self._notify()

    # -- requests ----------------------------------------------------------------------------
    def _remember(self, video_id: str, state: Any, nbytes: int, motion: float = 0.0) -> None:
        """Keep a finished video's state (an ObjectRef of its last checkpoint) for extensions;
        ``motion``: of its last chunk (the ``score`` eviction order's input)."""
        if state is not None:
            self.sessions.put(video_id, state, nbytes, priority=motion)  # may evict others, or keep nothing

    def drop_session(self, video_id: str) -> None:
        """Forget a video's stored state (its job was deleted)."""
        self.sessions.pop(video_id)

    async def generate(
        self,
        request_json: bytes,
        request_id: str | None = None,
        continuation: Continuation | None = None,
        on_progress: Callable[[WorkEvent], None] | None = None,
    ) -> dict[str, Any]:
        """Serve one validated video request (its JSON); returns the video response dict.
        ``continuation``: make its plan from the stored state of the video it names (an
        extension), or, that state evicted, from nothing (the same frames, slower).
        ``on_progress`` gets every ``chunk`` event (units and chunks done / total).

        Raises :class:`FleetError` if the request itself failed, :class:`FleetUnavailable`
        if every attempt's worker died (or none was ready in time)."""
        import ray
        from ray.exceptions import RayActorError

        try:
            from ray.exceptions import ActorUnavailableError
        except ImportError:  # older Ray
            ActorUnavailableError = RayActorError  # noqa: N806

        plan = session = None
        if continuation is not None:
            plan, session = continuation.plan, self.sessions.get(continuation.session)
            self.stats.continuations += 1
            self.stats.sessions_regenerated += session is None
        t_submit = time.monotonic()
        request_id = request_id or f"video-{uuid.uuid4().hex}"
        state = self.attempts[request_id] = Attempt(request_id)
        state.checkpoint = session  # a continuation starts from the stored video
        self.stats.requests += 1
        last_nbytes = 0
        last_motion = 0.0
        dispatch_s = float("nan")
        avoid: set[int] = set()
        died_at: float | None = None
        errors: list[str] = []
        try:
            for attempt in range(self.config.max_attempts):
                state.attempt = attempt
                worker = await self._acquire(avoid, request_id)
                state.worker_id = worker.worker_id
                if attempt:
                    self.stats.retries += 1
                    if state.checkpoint is not None:
                        self.stats.resumed_from_checkpoint += 1
                order = WorkOrder(request_id=request_id, attempt=attempt, request=request_json, plan=plan)
                try:
                    stream = worker.actor.run.remote(encode(order), state.checkpoint)
                    async for ref in stream:
                        event: WorkEvent = decode(await ref, WorkEvent)
                        if event.kind == "started":
                            if not attempt:
                                dispatch_s = time.monotonic() - t_submit
                            if attempt:
                                state.resumed_chunks.append(event.chunk)
                            if died_at is not None:
                                recovery = time.monotonic() - died_at
                                state.recoveries_s.append(recovery)
                                self.stats.recoveries_s.append(recovery)
                                died_at = None
                        elif event.kind == "chunk":
                            if event.has_checkpoint:
                                # awaited before it counts: a stream whose worker dies yields an
                                # error ref in place of the item. Put again by this process, the
                                # copy is created (not only owned) here, so it survives the
                                # worker's node too, not just the worker process
                                state.checkpoint = ray.put(await (await stream.__anext__()))
                                last_nbytes, last_motion = event.nbytes, event.motion
                            state.chunks = event.chunk
                            if on_progress is not None:
                                on_progress(event)
                        elif event.kind == "done":
                            self.stats.completed += 1
                            final = state.checkpoint if state.chunks == event.chunk and last_nbytes else None
                            self._remember(request_id, final, last_nbytes, last_motion)
                            response = event.response
                            fleet = dict(
                                worker=worker.worker_id,
                                attempts=attempt + 1,
                                resumed_at_chunk=state.resumed_chunks,
                                recovery_s=[round(r, 3) for r in state.recoveries_s],
                                # submit -> the engine set the request up (routing, queueing in
                                # the router, the Ray call, the engine's admission), and submit ->
                                # the answer back here
                                dispatch_s=round(dispatch_s, 4),
                                latency_s=round(time.monotonic() - t_submit, 4),
                            )
                            if continuation is not None:
                                fleet.update(
                                    continued=continuation.session, session="regenerated" if session is None else "hit"
                                )
                            response.setdefault("stats", {})["fleet"] = fleet
                            return response
                        else:
                            self.stats.failed += 1
                            raise FleetError(event.error or "the request failed")
                    raise RayActorError()  # the stream ended without an answer: the worker went away
                except (RayActorError, ActorUnavailableError) as exc:
                    died_at = died_at or time.monotonic()
                    errors.append(f"attempt {attempt + 1} on worker {worker.worker_id}: {type(exc).__name__}")
                    avoid.add(worker.worker_id)
                    await self._worker_died(worker, exc)
                finally:
                    await self._release(worker, request_id)
            raise FleetUnavailable(
                f"request {request_id} did not finish: its worker died in each of {self.config.max_attempts} "
                f"attempts ({'; '.join(errors)})"
            )
        except FleetUnavailable:
            self.stats.unavailable += 1
            raise
        finally:
            del self.attempts[request_id]

    # -- views -------------------------------------------------------------------------------
    def worker_rows(self) -> list[dict[str, Any]]:
        """``GET /v1/workers``: one row per worker (the router's state plus the worker's last info)."""
        rows = []
        for w in self.workers:
            info = msgspec.to_builtins(w.info) if w.info is not None else {}
            info.pop("worker_id", None)
            requests = [
                dict(id=a.request_id, attempt=a.attempt, chunks=a.chunks)
                for rid in sorted(w.running)
                if (a := self.attempts.get(rid)) is not None
            ]
            rows.append(
                dict(
                    id=w.worker_id,
                    state=w.state,
                    running_requests=len(w.running),
                    requests=requests,
                    deaths=w.deaths,
                    last_error=w.last_error,
                    **info,
                )
            )
        return rows
