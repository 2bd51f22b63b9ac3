"""Messages between the fleet's HTTP front (router) and its engine workers (Ray actors).

Every message is a ``msgspec.Struct`` encoded to msgpack bytes before it is handed to Ray,
so Ray only ever transports ``bytes`` of ours (its own pickling of those bytes aside)::

    front ──WorkOrder (msgpack)──▶ EngineWorker.run(order, checkpoint)   (a Ray streaming call)
          ◀──WorkEvent "started"── the engine set the request up (resumed, with a checkpoint)
          ◀──WorkEvent "chunk"──── after every finished chunk, then its Checkpoint (own item)
          ◀──WorkEvent "done"───── the response (or "error": the request failed for good)
    front ──▶ EngineWorker.info() ──▶ WorkerInfo (for routing and GET /v1/workers)

The front (the caller of the streaming call) owns what the stream yields; it puts each
checkpoint again itself, so the copy it resumes from outlives the worker and its node.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from motioncache_vllm.runtime.snapshot import VideoPlan

WorkerState = Literal["starting", "ready", "dead", "restarting"]


class WorkOrder(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    """One attempt at one fleet request, front -> worker."""

    request_id: str
    """The fleet's id of the request (the same across retries; the response's ``id``)."""
    attempt: int
    """0 for the first attempt, then 1, 2, ... (each on a live worker)."""
    request: bytes
    """The validated video request, as the JSON the engine's IO processor parses."""
    plan: VideoPlan | None = None
    """What to make when it is more than the request: a continuation of a stored video (its
    plan, extended by this request). The run's checkpoint argument, if any, is a snapshot
    of this plan or of a prefix of it (none: made from nothing, the same frames)."""


class Checkpoint(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    """A request's resumable state after a finished chunk (see ``runtime.snapshot``)."""

    chunk: int
    """Chunks finished (the state resumes at the start of chunk ``chunk``)."""
    units_done: int
    state: bytes
    """The runtime's snapshot, msgpack-encoded by the runtime (never pickled)."""


class WorkEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    """worker -> front, streamed while a request runs."""

    kind: Literal["started", "chunk", "done", "error"]
    worker_id: int
    chunk: int = 0
    """``chunk``: chunks finished so far (``started``: the chunk it starts or resumes at)."""
    has_checkpoint: bool = False
    """``chunk``: the stream's next item is this chunk's :class:`Checkpoint` (msgpack bytes);
    after the last chunk, the finished video's state (a session an extension continues)."""
    nbytes: int = 0
    """``chunk``: size of the checkpoint's snapshot (its tensors)."""
    units_done: int = 0
    units_total: int = 0
    """``chunk``: denoising units (steps and commits) of this attempt done / in all."""
    chunks_total: int = 0
    motion: float = 0.0
    """``chunk`` of the video's last chunk: its motion (``worker.last_chunk_motion``), which
    the front's ``score`` eviction of stored videos weighs."""
    plan: VideoPlan | None = None
    """``done``: what the video is made of (its request resolved, then each extension)."""
    response: dict[str, Any] | None = None
    """``done``: the video response (as ``POST /v1/videos`` of one engine answers)."""
    error: str | None = None
    """``error``: why the request failed (a failure of the request, not of the worker)."""


class WorkerInfo(msgspec.Struct, kw_only=True):
    """One row of ``GET /v1/workers`` (the worker's own part; the front adds its view)."""

    worker_id: int
    node_id: str
    node_ip: str
    pid: int
    running: int
    """Requests in this worker's engine (running or waiting in its scheduler)."""
    pool_in_use_bytes: int
    pool_peak_bytes: int
    pool_budget_bytes: int | None
    """None: the activation pool is unbounded."""
    torch_threads: int
    gpus: list[str] = msgspec.field(default_factory=list)
    """Accelerator ids Ray assigned to the worker (empty on CPU)."""
    videos_done: int = 0
    engine_steps: int = 0


class WorkerSpec(msgspec.Struct, kw_only=True):
    """How a worker builds its engine (front -> worker at start-up)."""

    worker_id: int
    model_dir: str
    """The vLLM model folder of the video model (``vllm_plugin.build_model_dir``)."""
    engine_argv: list[str]
    """``vllm serve`` engine flags, exactly as ``motioncache serve`` passes them."""
    num_threads: int = 1
    env: dict[str, str] = msgspec.field(default_factory=dict)


def encode(message: msgspec.Struct) -> bytes:
    return msgspec.msgpack.encode(message)


def decode(data: bytes, type_: type) -> Any:
    return msgspec.msgpack.decode(data, type=type_)
