"""Per-unit events from the engine worker to the API server: progress and streamed frames.

vLLM's pooling path hands a request's output to the API server once, when the request
ends. A job's ``progress`` and ``"stream": true`` need more, so the worker (in the
EngineCore process under ``vllm serve``) sends a :class:`VideoEvent` after every unit it
runs, and for a streaming request after every finished chunk the chunk's frames, on a
ZeroMQ socket beside vLLM's own; the API server reads them and updates its jobs. A second
socket carries the API server's few commands the other way (drop a deleted video's
session)::

    EngineCore: VideoWorker ──PUSH VideoEvent──▶ PULL  API server: EventListener ─▶ jobs
                            ◀──PULL WorkerCommand── PUSH

Both addresses derive from ``MOTIONCACHE_CHANNEL`` (an ``ipc://`` path prefix), which
``motioncache serve`` sets before vLLM starts, so every process it spawns inherits it. The
API server binds, the worker connects (ZeroMQ lets either come first). Without the
variable (the offline ``LLM`` class, tests) there is no channel and nothing is sent.

Sends never block the engine loop: a full queue (no API server reading) drops the event
and counts it. Progress events are idempotent (each carries the totals so far), so a
dropped one only delays a figure; a dropped frame event ends that stream with an error.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import msgspec

logger = logging.getLogger(__name__)

CHANNEL_ENV = "MOTIONCACHE_CHANNEL"
SEND_HWM = 10_000
"""Events queued per socket before sends drop (a slow or absent reader never stalls the engine)."""


class VideoEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    """One unit of a job done (and, for a streaming job at a chunk's end, its new frames)."""

    job: str
    units_done: int
    units_total: int
    chunks_done: int = 0
    chunks_total: int = 0
    frame_start: int = 0
    """Index in the video of the first frame in ``frames``."""
    frames: bytes = b""
    """uint8 frames (n, H, W, 3), C order; empty for a progress-only event."""
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)


class WorkerCommand(msgspec.Struct, array_like=True, omit_defaults=True, kw_only=True):
    drop_session: str | None = None
    """Forget this video's stored state (the video was deleted)."""


def addresses(prefix: str) -> tuple[str, str]:
    """(events, commands) ZeroMQ addresses of a channel prefix."""
    return f"{prefix}.events", f"{prefix}.commands"


def new_channel_prefix(directory: str) -> str:
    return f"ipc://{os.path.join(directory, f'motioncache-{os.getpid()}')}"


class WorkerChannel:
    """The worker's end: ``publish`` events; a daemon thread applies commands via ``on_command``."""

    def __init__(self, prefix: str, on_command: Callable[[WorkerCommand], None]) -> None:
        import zmq

        events, commands = addresses(prefix)
        self._ctx = zmq.Context()
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(events)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.connect(commands)
        self._on_command = on_command
        self._encoder = msgspec.msgpack.Encoder()
        self.dropped = 0
        self._lock = threading.Lock()  # zmq sockets are not thread-safe; sends come from the engine thread only
        threading.Thread(target=self._commands, name="motioncache-commands", daemon=True).start()

    @classmethod
    def from_env(cls, on_command: Callable[[WorkerCommand], None]) -> "WorkerChannel | None":
        prefix = os.environ.get(CHANNEL_ENV)
        if not prefix:
            return None
        try:
            return cls(prefix, on_command)
        except Exception:  # noqa: BLE001  (no channel: jobs still finish, without live progress)
            logger.exception("motioncache: no event channel at %s", prefix)
            return None

    def publish(self, event: VideoEvent) -> bool:
        import zmq

        try:
            self._push.send(self._encoder.encode(event), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.dropped += 1
            return False

    def _commands(self) -> None:
        decoder = msgspec.msgpack.Decoder(WorkerCommand)
        while True:
            try:
                command = decoder.decode(self._pull.recv())
                self._on_command(command)
            except Exception:  # noqa: BLE001  (a bad command must not end the thread)
                logger.exception("motioncache: bad worker command")


class EventListener:
    """The API server's end: binds both sockets; ``run`` (an asyncio task) feeds ``on_event``."""

    def __init__(self, prefix: str) -> None:
        import zmq
        import zmq.asyncio

        events, commands = addresses(prefix)
        self._ctx = zmq.asyncio.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(events)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.bind(commands)

    async def run(self, on_event: Callable[[VideoEvent], None]) -> None:
        decoder = msgspec.msgpack.Decoder(VideoEvent)
        while True:
            data = await self._pull.recv()
            try:
                on_event(decoder.decode(data))
            except Exception:  # noqa: BLE001
                logger.exception("motioncache: bad video event")

    async def command(self, command: WorkerCommand) -> None:
        import zmq

        try:
            await self._push.send(msgspec.msgpack.encode(command), zmq.NOBLOCK)
        except zmq.Again:
            logger.warning("motioncache: worker command dropped (%s)", command)

    def close(self) -> None:
        self._ctx.destroy(linger=0)
