"""The server's edge: what a request must pass before it reaches a route, and the engine watchdog.

One pure ASGI middleware in front of every route of the server (the endpoint plugin calls
:func:`install` and :func:`init_state`):

1. **api key** (``--api-key``): every route but ``/health``, ``/ping``, ``/metrics`` and
   ``/version`` needs ``Authorization: Bearer KEY`` (vLLM's own check covers ``/v1/*`` only,
   so ``/pooling`` was open);
2. **body size**: a body over ``serve_max_body_bytes`` gets 413 from its ``Content-Length``
   before a byte is read, or as soon as a chunked body crosses the limit;
3. **JSON**: on the generation routes the body must be strict JSON (no NaN/Infinity, no
   number out of range) nested at most ``serve_max_json_depth`` deep, checked by a scan
   before any parser recurses;
4. **memory admission** (generation routes): the request's peak memory is estimated from
   its shape (:func:`motioncache_vllm.limits.request_memory`); one that can never fit the
   budget gets 400 naming need and limit, one that fits later waits in :class:`MemoryGate`;
5. **cancellation and timeout** (generation routes): when the client disconnects, or the
   request runs past ``serve_request_timeout_s`` (504), the route's task is cancelled, which
   makes vLLM abort the engine request; the worker then frees its K/V and pool blocks. Both
   are counted on ``/metrics``.

The watchdog: vLLM keeps its API server up after the engine core dies (``/health`` 503,
every request 500). :func:`watch_engine` notices the dead engine within a second and
stops the server; ``motioncache serve`` then exits with :data:`ENGINE_DIED_EXIT` so that a
supervisor (systemd, Kubernetes, a shell loop) restarts it.

Other routes that generate (the job API of ``/v1/videos``) take the same admission and
cancellation path through :func:`admission` and task cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator
from http import HTTPStatus

import msgspec

from motioncache_vllm.limits import (
    MIB,
    InvalidRequest,
    ModelGeometry,
    RequestTooLarge,
    ServeSettings,
    check_memory,
    json_depth,
    request_memory,
)

logger = logging.getLogger("vllm.motioncache.guard")  # vLLM's namespace: visible in its log

ENGINE_DIED_EXIT = 3
"""Exit status of ``motioncache serve`` after its engine core died."""
PUBLIC_PATHS = ("/health", "/ping", "/metrics", "/version")
GENERATION_ROUTES = {("POST", "/pooling"): "data", ("POST", "/v1/videos/generations"): None}
"""Routes that run a video within the HTTP request (cancelled on disconnect or timeout), and
where its fields sit in the body (None: the body itself)."""
ADMITTED_HERE = {("POST", "/pooling")}
"""Generation routes whose memory admission the middleware holds. The videos routes run jobs
that hold :func:`admission` themselves around the engine call (the synchronous form waits on
a job), and ``DELETE /v1/videos/{id}`` cancels a running job the same way."""
WATCH_INTERVAL_S = 0.5
TIMEOUT_HEADER = "x-request-timeout"
"""A client may ask for a shorter limit than the server's (seconds; invalid values are ignored)."""

engine_died = False
"""Set by the watchdog before it stops the server (read by the launcher for the exit status)."""


# -- memory admission ----------------------------------------------------------------------
class MemoryGate:
    """Admits requests while the sum of their peak memory stays within ``limit_bytes``;
    the others wait, first come first served. A request over the whole limit is refused."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.admitted_bytes = 0
        self._queue: list[tuple[int, asyncio.Future]] = []

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextlib.asynccontextmanager
    async def hold(self, need_bytes: int) -> AsyncIterator[None]:
        if need_bytes > self.limit_bytes:
            raise RequestTooLarge(need_bytes, self.limit_bytes)
        if not self._queue and self.admitted_bytes + need_bytes <= self.limit_bytes:
            self.admitted_bytes += need_bytes
        else:
            ticket = asyncio.get_running_loop().create_future()
            self._queue.append((need_bytes, ticket))
            _set_gauges(self)
            try:
                await ticket  # _admit_waiting counts our bytes before waking us
            except BaseException:
                if ticket.done() and not ticket.cancelled():
                    self._release(need_bytes)  # admitted, then cancelled before running
                else:
                    self._queue = [(n, t) for n, t in self._queue if t is not ticket]
                    self._admit_waiting()
                raise
        _set_gauges(self)
        try:
            yield
        finally:
            self._release(need_bytes)

    def _release(self, need_bytes: int) -> None:
        self.admitted_bytes -= need_bytes
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        while self._queue and self.admitted_bytes + self._queue[0][0] <= self.limit_bytes:
            need, ticket = self._queue.pop(0)
            self.admitted_bytes += need
            ticket.set_result(None)
        _set_gauges(self)


class Admission:
    """The memory budget of one server and how to price a request against it."""

    def __init__(self, geometry: ModelGeometry, limit_bytes: int, pool_bounded: bool) -> None:
        self.geometry, self.pool_bounded = geometry, pool_bounded
        self.gate = MemoryGate(limit_bytes)

    def need(self, request) -> int:
        """Peak bytes of a :class:`~.messages.VideoRequest`; raises RequestTooLarge if it can never fit."""
        need = request_memory(
            self.geometry,
            num_frames=request.num_frames,
            height=request.height,
            width=request.width,
            guidance_scale=request.guidance_scale,
            pool_bounded=self.pool_bounded,
        )
        check_memory(need, self.gate.limit_bytes)
        return need.total

    def hold(self, request):
        """``async with admission.hold(video_request):`` run it (waits while memory is taken)."""
        return self.gate.hold(self.need(request))


class _NoAdmission:
    """Where the served model's geometry could not be read: admit everything."""

    def hold(self, request):
        return contextlib.nullcontext()


def admission(state) -> Admission | _NoAdmission:
    """The server's :class:`Admission` (``app.state``): ``async with admission(state).hold(request):``."""
    return getattr(state, "motioncache_admission", None) or _NoAdmission()


def _set_gauges(gate: MemoryGate) -> None:
    from motioncache_vllm.vllm_plugin.metrics import set_admission

    set_admission(gate.admitted_bytes, gate.limit_bytes, gate.waiting)


def count(event: str) -> None:
    """Count a request ``cancelled``, ``timed_out`` or ``refused`` on /metrics."""
    from motioncache_vllm.vllm_plugin.metrics import count_request

    count_request(event)


# -- the middleware ------------------------------------------------------------------------
def error_body(message: str, status: int) -> bytes:
    """vLLM's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": None, "code": status}})


async def _answer(send, status: int, message: str) -> None:
    body = error_body(message, status)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI middleware (see the module docstring). Reads its settings from ``holder``
    (filled by :func:`init_state`; until then only the defaults apply)."""

    def __init__(self, app, holder: dict) -> None:
        self.app, self.holder = app, holder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings: ServeSettings = self.holder.get("settings") or ServeSettings()
        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        method = scope.get("method", "GET")
        tokens = self.holder.get("api_tokens")
        if tokens and method != "OPTIONS" and path not in PUBLIC_PATHS and not _authorised(scope, tokens):
            return await _answer(send, 401, "missing or wrong API key (send the header 'Authorization: Bearer KEY')")
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = settings.serve_max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            what = f"{declared} bytes" if declared.isdigit() else f"an invalid Content-Length {declared!r}"
            return await _answer(send, 413, f"request body of {what} is over the limit of {limit} bytes")
        try:
            body, more = await _read_body(receive, limit)
        except _TooLarge:
            return await _answer(send, 413, f"request body is over the limit of {limit} bytes")
        if body is None:  # the client went away while sending
            return
        field = GENERATION_ROUTES.get((method, path), "no route")
        content_type = (_header(scope, b"content-type") or "").lower()
        document = None
        if field != "no route" or content_type.startswith("application/json"):
            # strict JSON (no NaN/Infinity, numbers in range), depth scanned before any parser recurses
            depth = json_depth(body, settings.serve_max_json_depth)
            if depth > settings.serve_max_json_depth:
                return await _answer(
                    send, 400, f"invalid request: JSON nested deeper than {settings.serve_max_json_depth} levels"
                )
            try:
                document = msgspec.json.decode(body) if body.strip() else None
            except msgspec.DecodeError as exc:
                return await _answer(send, 400, f"invalid request: body is not JSON ({exc})")
        if field != "no route":
            if not body.strip():
                return await _answer(send, 400, "invalid request: the body is empty (send a JSON object)")
            admit = (method, path) in ADMITTED_HERE
            return await self._generation(scope, receive, send, body, document, field, settings, admit)
        await self.app(scope, _replay(body, receive, more), send)

    async def _generation(
        self, scope, receive, send, body: bytes, document, field: str | None, settings: ServeSettings, admit: bool
    ) -> None:
        data = document.get(field) if field and isinstance(document, dict) else document
        gate = self.holder.get("admission") if admit else None
        need = 0
        if gate is not None and isinstance(data, dict):
            from motioncache_vllm.vllm_plugin.messages import InvalidVideoRequest, decode_request

            fields = {k: v for k, v in data.items() if k != "model"}
            try:
                need = gate.need(decode_request(fields))
            except RequestTooLarge as exc:
                count("refused")
                return await _answer(send, 400, f"invalid video request: {exc}")
            except (InvalidVideoRequest, InvalidRequest):
                pass  # the route answers it with its own message
        disconnected = asyncio.Event()
        state = {"started": False}

        async def inner_receive():
            if not state.get("body_sent"):
                state["body_sent"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def inner_send(message):
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        holding = gate.gate.hold(need) if gate is not None and need else contextlib.nullcontext()
        async with holding:
            await self._run(scope, receive, inner_receive, inner_send, send, disconnected, state, settings, admit)

    async def _run(
        self, scope, outer_receive, inner_receive, inner_send, send, disconnected, state, settings, admit: bool
    ) -> None:
        app_task = asyncio.ensure_future(self.app(scope, inner_receive, inner_send))

        async def listen() -> None:
            while True:
                message = await outer_receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    return

        listener = asyncio.ensure_future(listen())
        timeout = _timeout(scope, settings.serve_request_timeout_s)
        try:
            done, _ = await asyncio.wait({app_task, listener}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if app_task in done:
                return app_task.result()
            app_task.cancel()  # vLLM aborts the engine request when its generator is cancelled
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await app_task
            if listener in done:
                if admit:  # (a job-backed route's job counts its own cancellation)
                    count("cancelled")
                logger.info("client disconnected: video request cancelled")
            else:
                count("timed_out")
                logger.info("video request timed out after %.1f s: cancelled", timeout)
                if not state["started"]:
                    await _answer(send, 504, f"the video request ran past the server's limit of {timeout:g} s")
        finally:
            listener.cancel()
            if not app_task.done():
                app_task.cancel()


def _timeout(scope, server_limit: float | None) -> float | None:
    """The server's limit, or the client's ``X-Request-Timeout`` (seconds) when shorter."""
    asked = _header(scope, TIMEOUT_HEADER.encode())
    try:
        value = float(asked) if asked is not None else None
    except ValueError:
        value = None
    if value is None or not (0 < value < float("inf")):
        return server_limit
    return value if server_limit is None else min(value, server_limit)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _authorised(scope, tokens: list[bytes]) -> bool:
    value = _header(scope, b"authorization") or ""
    scheme, _, key = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    digest = hashlib.sha256(key.strip().encode()).digest()
    return any(secrets.compare_digest(digest, t) for t in tokens)


async def _read_body(receive, limit: int) -> tuple[bytes | None, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive, more: bool):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- engine watchdog -----------------------------------------------------------------------
def _note_shutdown(engine_client) -> dict:
    """Wrap ``engine_client.shutdown`` so that a deliberate stop (SIGTERM/SIGINT to the server,
    whose handler shuts the engine client down first) is not taken for a death."""
    flag = {"stopping": False}
    original = engine_client.shutdown

    def shutdown(*args, **kwargs):
        flag["stopping"] = True
        return original(*args, **kwargs)

    engine_client.shutdown = shutdown
    return flag


async def watch_engine(engine_client, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Stop the server (SIGTERM to this process) once the engine core is dead. (vLLM's own
    watchdog stops it too, but only once its output handler has failed, and with status 0.)"""
    global engine_died
    stopping = _note_shutdown(engine_client)
    while True:
        await asyncio.sleep(interval_s)
        if stopping["stopping"]:
            return
        try:
            dead = bool(engine_client.errored)
        except Exception:  # noqa: BLE001
            dead = True
        if dead and not stopping["stopping"]:
            engine_died = True
            logger.error(
                "the engine core died: stopping the server (exit status %d) so that a supervisor restarts it",
                ENGINE_DIED_EXIT,
            )
            os.kill(os.getpid(), signal.SIGTERM)
            return


# -- the plugin ----------------------------------------------------------------------------
def _api_tokens(args) -> list[bytes]:
    keys = getattr(args, "api_key", None) or os.environ.get("VLLM_API_KEY")
    if isinstance(keys, str):
        keys = [keys]
    return [hashlib.sha256(k.encode()).digest() for k in keys or () if k]


def install(app) -> None:
    """Put the middleware in front of ``app`` (call from an endpoint plugin's ``attach_router``;
    added last = outermost: it runs before vLLM's own middleware and routes). Idempotent."""
    if getattr(app.state, "motioncache_guard", None) is not None:
        return
    holder: dict = {"app": app}
    app.state.motioncache_guard = holder
    app.add_middleware(GuardMiddleware, holder=holder)


def _make_outermost(app) -> None:
    """vLLM adds its own middleware (its api-key check on /v1/*, request ids, ...) after the
    endpoint plugins; move ours back in front so that every refusal has one shape. (Runs before
    the server takes requests; vLLM's SageMaker bootstrap has built the stack already, so
    it is dropped and Starlette builds it again, in the new order, at its first call.)"""
    ours = [m for m in app.user_middleware if m.cls is GuardMiddleware]
    app.user_middleware[:] = ours + [m for m in app.user_middleware if m.cls is not GuardMiddleware]
    app.middleware_stack = None


async def init_state(engine_client, state, args) -> None:
    """Settings, api keys, memory admission and the engine watchdog (call from an endpoint
    plugin's ``init_state``). Idempotent."""
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    holder = getattr(state, "motioncache_guard", None)
    if holder is None or "settings" in holder:
        return
    _make_outermost(holder["app"])
    additional = getattr(args, "additional_config", None) or {}
    settings = ServeSettings.from_additional_config(additional)
    cache = EngineCacheSettings.from_additional_config(additional)
    holder["api_tokens"] = _api_tokens(args)
    if engine_client is not None:
        geometry = _served_geometry(engine_client)
        if geometry is not None:
            gate = Admission(
                geometry,
                settings.memory_budget_bytes(cache.pool.pool_mib),
                pool_bounded=cache.pool.pool_mib is not None,
            )
            holder["admission"] = state.motioncache_admission = gate
            _set_gauges(gate.gate)
            logger.info("memory budget of video requests: %.0f MiB", gate.gate.limit_bytes / MIB)
        holder["watchdog"] = asyncio.get_running_loop().create_task(watch_engine(engine_client))
    holder["settings"] = settings


def _served_geometry(engine_client) -> ModelGeometry | None:
    try:
        from motioncache_vllm.vllm_plugin.processor import served_geometry

        return served_geometry(engine_client.vllm_config)
    except Exception:
        logger.exception("could not read the served model's geometry: memory admission is off")
        return None
