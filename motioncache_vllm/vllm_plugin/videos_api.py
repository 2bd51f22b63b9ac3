"""OpenAI's Videos API over any video engine: jobs, their routes, the request mapping.

The contract of ``client.videos`` in the ``openai`` Python client (and of vllm-omni,
LiteLLM, LocalAI)::

    POST   /v1/videos                  create a job (JSON or multipart/form-data) -> Video (queued)
    GET    /v1/videos/{id}             the job: status queued | in_progress | completed | failed, progress
    GET    /v1/videos                  list (after, limit, order) -> {data, first_id, last_id, has_more}
    DELETE /v1/videos/{id}             cancel if running, forget the video, its content and stored state
    GET    /v1/videos/{id}/content     variant=video (MP4) | thumbnail (PNG) | spritesheet (PNG)
    POST   /v1/videos/extensions       continue a completed video: {video: {id}, prompt, seconds}
    POST   /v1/videos/{id}/remix       the same video settings, a new prompt

and one route of ours for curl users, ``POST /v1/videos/generations``: synchronous, the
body of a ``/pooling`` request's ``data``, answers ``{id, video: base64 mp4, stats, ...}``
when the video is done (like OpenAI's synchronous ``/v1/images/generations``).

Request mapping: ``size`` "WIDTHxHEIGHT" -> width/height; ``seconds`` -> frames at
:data:`~.processor.VIDEO_FPS` (16 fps), rounded to the 4k+1 frames the model makes
(``"1"`` -> 17 frames, ``"2"`` -> 33); our fields ride in the same body (the client's
``extra_body``): ``num_frames`` (overrides ``seconds``), ``seed``, ``num_inference_steps``,
``guidance_scale``, ``cache``, ``stream``. The Video object carries the cache figures
under ``motioncache``.

The module knows nothing of vLLM: a :class:`VideoService` takes the engine as an async
``submit(VideoRequest) -> VideoResponse dict`` (``endpoint.py`` plugs vLLM in; a fleet
can plug in its own), a ``validate`` for request bodies, and is fed progress events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgspec
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from motioncache_vllm.runtime.snapshot import VideoPlan
from motioncache_vllm.vllm_plugin.events import VideoEvent
from motioncache_vllm.vllm_plugin.messages import (
    Continuation,
    InvalidVideoRequest,
    VideoGenerationError,
    VideoRequest,
)

logger = logging.getLogger(__name__)

VIDEOS_PATH = "/v1/videos"
SYNC_PATH = "/v1/videos/generations"
POLL_AFTER_MS = 250
"""``openai-poll-after-ms`` of a job not started yet: the client's ``poll`` waits this long (its default is 1 s)."""
POLL_AFTER_RANGE_MS = (20, 1000)
"""Bounds of the ``openai-poll-after-ms`` of a running job (half its estimated remaining time)."""
LIST_LIMIT = (20, 100)
"""Default and largest ``limit`` of a list page."""
SPRITES = 16
"""Frames in a spritesheet (evenly spaced), 4 per row."""
_STRING_FIELDS = {"prompt", "model", "size", "seconds", "id", "policy"}
"""Form fields kept as strings (the others are parsed as JSON scalars where they are one)."""


class ApiError(Exception):
    """An error answer in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param

    def response(self) -> JSONResponse:
        kind = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error"}.get(
            self.status.value, "server_error" if self.status >= 500 else "invalid_request_error"
        )
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.status.value}}
        return JSONResponse(body, status_code=self.status.value)


@dataclass
class ServiceSettings:
    fps: int = 16
    ttl_s: float = 3600.0
    """Completed content is kept this long (``expires_at``), then dropped."""
    store_bytes: int | None = 1024 * 2**20
    """Budget of kept MP4s; past it the oldest completed content expires first."""
    max_jobs: int = 10_000
    """Job records kept (the oldest finished ones are forgotten past it)."""


@dataclass
class Job:
    id: str
    request: VideoRequest
    model: str
    created_at: int
    status: str = "queued"
    progress: int = 0
    units_done: int = 0
    units_total: int = 0
    started_s: float | None = None  # time.monotonic() of the job's first worker event
    completed_at: int | None = None
    expires_at: int | None = None
    error: dict | None = None
    extended_from: str | None = None
    remixed_from: str | None = None
    result: dict | None = None  # VideoResponse fields but the video
    plan: VideoPlan | None = None
    mp4: bytes | None = None
    task: asyncio.Task | None = None
    streams: list[asyncio.Queue] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed")


def poll_after_ms(units_done: int, units_total: int, elapsed_s: float | None) -> int:
    """When a client polling an unfinished job should ask again: half the job's estimated
    remaining time (from its pace so far), within ``POLL_AFTER_RANGE_MS``; ``POLL_AFTER_MS``
    before its first unit. A fixed short interval would keep every waiting client's polls
    (and the server's answers) on the cores the engine computes on; halving keeps the
    delay after completion short (the last polls come every ``POLL_AFTER_RANGE_MS[0]``)."""
    if elapsed_s is None or units_done <= 0 or units_total <= 0:
        return POLL_AFTER_MS
    remaining_s = elapsed_s * max(units_total - units_done, 0) / units_done
    low, high = POLL_AFTER_RANGE_MS
    return int(min(max(500 * remaining_s, low), high))


def seconds_text(frames: int, fps: int) -> str:
    return f"{(frames - 1) / fps:g}"


def frames_of_seconds(value: Any, fps: int, param: str = "seconds") -> int:
    """Pixel frames added by ``value`` seconds at ``fps``: a multiple of 4 (the temporal factor)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ApiError(f"`{param}` must be a number of seconds, got {value!r}", param=param) from None
    frames = round(seconds * fps / 4) * 4
    if not np.isfinite(seconds) or frames < 4:
        raise ApiError(f"`{param}` must be at least {4 / fps:g} s (4 frames at {fps} fps), got {value!r}", param=param)
    return frames


def parse_size(value: Any) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(f'`size` must be WIDTHxHEIGHT in pixels (e.g. "64x64"), got {value!r}', param="size")
    return int(match.group(1)), int(match.group(2))


def _form_value(key: str, value: str) -> Any:
    if key in _STRING_FIELDS:
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value


async def read_body(request: Request) -> dict[str, Any]:
    """The request's fields from JSON or multipart/form-data (``a[b][c]`` keys nest, as the
    ``openai`` client encodes ``extra_body`` dicts); a file part is refused."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        try:
            form = await request.form()
        except Exception as exc:  # noqa: BLE001
            raise ApiError(f"unreadable form body: {exc}") from None
        body: dict[str, Any] = {}
        for key, value in form.multi_items():
            parts = re.findall(r"[^\[\]]+", key) or [key]
            if not isinstance(value, str):
                raise ApiError(
                    f"`{parts[0]}`: file uploads are not supported: this model has no image conditioning",
                    param=parts[0],
                )
            node = body
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ApiError(f"form field `{key}` conflicts with another field", param=parts[0])
            node[parts[-1]] = _form_value(parts[-1], value)
        return body
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(f"invalid video request: body is not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict):
        raise ApiError(f"invalid video request: expected a JSON object, got {type(body).__name__}")
    return body


def _decode_frames(mp4: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return np.asarray(iio.imread(io.BytesIO(mp4), extension=".mp4", plugin="pyav"))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def thumbnail_png(mp4: bytes) -> bytes:
    return _png(_decode_frames(mp4)[0])


def spritesheet_png(mp4: bytes, count: int = SPRITES, per_row: int = 4) -> bytes:
    frames = _decode_frames(mp4)
    picks = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    rows = -(-len(picks) // per_row)
    h, w = picks.shape[1:3]
    sheet = np.zeros((rows * h, per_row * w, 3), dtype=np.uint8)
    for i, frame in enumerate(picks):
        r, c = divmod(i, per_row)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
    return _png(sheet)


def _count_cancelled() -> None:
    """On /metrics (``motioncache_requests_ended_early_total{reason="cancelled"}``)."""
    with contextlib.suppress(Exception):
        from motioncache_vllm.vllm_plugin.metrics import count_request

        count_request("cancelled")


class VideoService:
    """Jobs over an engine (see module docstring). Runs in one event loop (the API server's)."""

    def __init__(
        self,
        submit: Callable[[VideoRequest], Awaitable[dict]],
        validate: Callable[[dict], VideoRequest],
        model_name: str,
        settings: ServiceSettings | None = None,
        check_model: Callable[[str], str | None] | None = None,
        hold: Callable[[VideoRequest], contextlib.AbstractAsyncContextManager] | None = None,
        drop_session: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.submit, self.validate, self.model_name = submit, validate, model_name
        self.settings = settings or ServiceSettings()
        self.check_model = check_model
        self.hold = hold
        self.drop_session = drop_session
        self.jobs: dict[str, Job] = {}

    # -- requests -> VideoRequest ----------------------------------------------------------
    def _model(self, body: dict) -> str:
        model = body.pop("model", None)
        if model is None:
            return self.model_name
        if not isinstance(model, str):
            raise ApiError("`model` must be a string", param="model")
        if self.check_model is not None:
            problem = self.check_model(model)
            if problem:
                raise ApiError(problem, HTTPStatus.NOT_FOUND, param="model")
        return model

    def _validated(self, fields: dict) -> VideoRequest:
        try:
            return self.validate(fields)
        except (InvalidVideoRequest, ValueError) as exc:
            raise ApiError(str(exc)) from None

    def create_request(self, body: dict) -> tuple[VideoRequest, str]:
        """An OpenAI create body -> (VideoRequest, model)."""
        body = dict(body)
        model = self._model(body)
        if body.pop("input_reference", None) is not None:
            raise ApiError(
                "`input_reference` is not supported: this model has no image conditioning", param="input_reference"
            )
        fields = {k: v for k, v in body.items() if k not in ("seconds", "size")}
        if "size" in body:
            fields["width"], fields["height"] = parse_size(body["size"])
        if "seconds" in body and "num_frames" not in body:
            fields["num_frames"] = frames_of_seconds(body["seconds"], self.settings.fps) + 1
        return self._validated(fields), model

    def extension_request(self, body: dict) -> tuple[VideoRequest, str, Job]:
        """``{video: {id}, prompt, seconds}`` (+ ``num_frames`` to add, ``seed``, ...) -> the
        request continuing the source video's plan."""
        body = dict(body)
        model = self._model(body)
        ref = body.pop("video", None)
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str) or set(ref) != {"id"}:
            raise ApiError('`video` must be {"id": "<a completed video\'s id>"}', param="video")
        source = self.get(ref["id"])
        if source.status != "completed" or source.plan is None:
            raise ApiError(
                f"video {source.id} is {source.status}: only a completed video can be extended", param="video"
            )
        if "num_frames" in body:
            added = body.pop("num_frames")
            if not isinstance(added, int) or isinstance(added, bool) or added <= 0 or added % 4:
                raise ApiError(
                    f"`num_frames` (frames to add) must be a positive multiple of 4, got {added!r}", param="num_frames"
                )
        elif "seconds" in body:
            added = frames_of_seconds(body.pop("seconds"), self.settings.fps)
        else:
            raise ApiError("`seconds` (length of the extension) is required", param="seconds")
        body.pop("seconds", None)
        for fixed in ("size", "height", "width", "num_inference_steps", "guidance_scale", "input_reference"):
            if fixed in body:
                raise ApiError(f"`{fixed}` of an extension is the source video's", param=fixed)
        plan = source.plan
        total = plan.num_frames + added
        seed = body.pop("seed", source.request.seed)
        prompt = body.get("prompt")
        fields = {
            **body,
            "num_frames": total,
            "height": plan.height,
            "width": plan.width,
            "num_inference_steps": plan.steps,
            "guidance_scale": plan.guidance,
            "seed": seed,
        }
        request = self._validated(fields)
        if not isinstance(prompt, str):
            raise ApiError("`prompt` is required", param="prompt")
        continuation = Continuation(session=source.id, plan=plan.extended(request.prompt, total, request.seed))
        return msgspec.structs.replace(request, continue_from=continuation), model, source

    # -- jobs ------------------------------------------------------------------------------
    def get(self, video_id: str) -> Job:
        self._expire()
        job = self.jobs.get(video_id)
        if job is None:
            raise ApiError(f"no video with id {video_id!r}", HTTPStatus.NOT_FOUND, param="video_id")
        return job

    def start(self, request: VideoRequest, model: str, **links) -> Job:
        job_id = f"video_{uuid.uuid4().hex}"
        request = msgspec.structs.replace(request, job=job_id)
        job = Job(id=job_id, request=request, model=model, created_at=int(time.time()), **links)
        self.jobs[job_id] = job
        self._forget_old()
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=f"motioncache-{job_id}")
        return job

    async def _run(self, job: Job) -> None:
        try:
            async with self.hold(job.request) if self.hold is not None else contextlib.nullcontext():
                result = await self.submit(job.request)
            mp4 = base64.b64decode(result.pop("video"))
        except asyncio.CancelledError:
            self._fail(job, "cancelled", "the video was cancelled (deleted, or its client went away)")
            _count_cancelled()
            raise
        except ApiError as exc:
            self._fail(job, "invalid_request", str(exc))
        except (InvalidVideoRequest, ValueError) as exc:
            self._fail(job, "invalid_request", str(exc))
        except VideoGenerationError as exc:
            self._fail(job, "generation_failed", str(exc))
        except Exception as exc:  # noqa: BLE001  (engine dead, ...: the job fails, never stays in_progress)
            logger.exception("video job %s failed", job.id)
            self._fail(job, "server_error", f"{type(exc).__name__}: {exc}")
        else:
            plan = result.pop("plan", None)
            job.plan = None if plan is None else msgspec.convert(plan, VideoPlan)
            job.result, job.mp4 = result, mp4
            job.status, job.progress = "completed", 100
            job.completed_at = int(time.time())
            job.expires_at = int(job.completed_at + self.settings.ttl_s)
            self._enforce_budget()
        finally:
            job.done.set()
            for queue in job.streams:
                queue.put_nowait(None)

    def _fail(self, job: Job, code: str, message: str) -> None:
        job.status, job.error = "failed", {"code": code, "message": message}
        job.completed_at = int(time.time())

    def on_event(self, event: VideoEvent) -> None:
        """A worker event (``events.EventListener``): progress, and frames for streams."""
        job = self.jobs.get(event.job)
        if job is None or job.finished:
            return
        job.status = "in_progress"
        if job.started_s is None:
            job.started_s = time.monotonic()
        job.units_done, job.units_total = max(job.units_done, event.units_done), event.units_total
        if event.units_total > 0:  # 100 only once the content is there
            job.progress = max(job.progress, min(99, 100 * event.units_done // event.units_total))
        if event.frames:
            for queue in job.streams:
                queue.put_nowait(event)

    async def delete(self, video_id: str) -> None:
        job = self.get(video_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()  # aborts the engine request (vLLM aborts a cancelled request)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        self.jobs.pop(video_id, None)
        job.mp4 = None
        if self.drop_session is not None:
            await self.drop_session(video_id)

    def _expire(self) -> None:
        now = time.time()
        for job in self.jobs.values():
            if job.mp4 is not None and job.expires_at is not None and job.expires_at <= now:
                job.mp4 = None

    def _enforce_budget(self) -> None:
        budget = self.settings.store_bytes
        if budget is None:
            return
        held = [j for j in self.jobs.values() if j.mp4 is not None]
        total = sum(len(j.mp4) for j in held)
        for job in sorted(held, key=lambda j: j.completed_at or 0):
            if total <= budget:
                break
            total -= len(job.mp4)
            job.mp4, job.expires_at = None, int(time.time())

    def _forget_old(self) -> None:
        excess = len(self.jobs) - self.settings.max_jobs
        for job_id in [j.id for j in self.jobs.values() if j.finished][: max(excess, 0)]:
            self.jobs.pop(job_id, None)

    # -- answers ---------------------------------------------------------------------------
    def video_object(self, job: Job) -> dict[str, Any]:
        r = job.request
        result = job.result or {}
        frames = result.get("num_frames") or r.num_frames
        size = (
            f"{result['width']}x{result['height']}"
            if result
            else (f"{r.width}x{r.height}" if r.width and r.height else None)
        )
        extra = {
            "num_frames": frames,
            "seed": r.seed,
            "num_inference_steps": r.num_inference_steps,
            "guidance_scale": r.guidance_scale,
            "extended_from_video_id": job.extended_from,
        }
        if result:
            extra.update(
                stats=result.get("stats"),
                frames_sha256=result.get("frames_sha256"),
                frame_sha256=result.get("frame_sha256"),
            )
        return {
            "id": job.id,
            "object": "video",
            "created_at": job.created_at,
            "completed_at": job.completed_at,
            "expires_at": job.expires_at,
            "error": job.error,
            "model": job.model,
            "progress": job.progress,
            "prompt": r.prompt,
            "remixed_from_video_id": job.remixed_from,
            "seconds": seconds_text(frames, self.settings.fps) if frames else "",
            "size": size or "default",
            "status": job.status,
            "motioncache": extra,
        }

    def answer(self, job: Job) -> JSONResponse:
        headers = {}
        if not job.finished:
            elapsed = None if job.started_s is None else time.monotonic() - job.started_s
            headers["openai-poll-after-ms"] = str(poll_after_ms(job.units_done, job.units_total, elapsed))
        return JSONResponse(self.video_object(job), headers=headers)

    def page(self, after: str | None, limit: int, order: str) -> dict[str, Any]:
        self._expire()
        jobs = list(self.jobs.values())
        if order == "desc":
            jobs.reverse()
        if after is not None:
            ids = [j.id for j in jobs]
            if after not in ids:
                raise ApiError(f"no video with id {after!r} (after)", HTTPStatus.NOT_FOUND, param="after")
            jobs = jobs[ids.index(after) + 1 :]
        data = [self.video_object(j) for j in jobs[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(jobs) > limit,
        }

    async def stream(self, job: Job) -> AsyncIterator[bytes]:
        """Server-sent events: ``video.chunk`` per finished chunk (its raw frames, base64),
        then ``video.completed`` or ``video.failed`` with the Video object. A client that
        leaves before the end cancels the job (nobody else holds its frames)."""
        queue: asyncio.Queue = asyncio.Queue()
        job.streams.append(queue)
        try:
            yield _sse("video.created", self.video_object(job))
            sent = 0
            while True:
                event = await queue.get()
                if event is None:
                    break
                n = event.shape[0]
                if event.frame_start + n <= sent:
                    continue
                yield _sse(
                    "video.chunk",
                    {
                        "id": job.id,
                        "chunks_done": event.chunks_done,
                        "chunks_total": event.chunks_total,
                        "frame_start": event.frame_start,
                        "num_frames": n,
                        "height": event.shape[1],
                        "width": event.shape[2],
                        "progress": job.progress,
                        "frames": base64.b64encode(event.frames).decode("ascii"),
                    },
                )
                sent = event.frame_start + n
            kind = "video.completed" if job.status == "completed" else "video.failed"
            yield _sse(kind, self.video_object(job))
        finally:
            job.streams.remove(queue)
            if not job.finished and not job.streams and job.task is not None:
                job.task.cancel()


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def videos_router(service_of: Callable[[Request], VideoService]) -> APIRouter:
    """The routes of the module docstring; ``service_of(request)`` finds the service
    (e.g. in ``app.state``), so the router can be mounted before the service exists."""
    router = APIRouter()

    def guarded(handler):
        async def route(request: Request) -> Response:
            try:
                return await handler(service_of(request), request, **request.path_params)
            except ApiError as exc:
                return exc.response()

        route.__name__ = handler.__name__
        return route

    async def create(service: VideoService, request: Request) -> Response:
        body = await read_body(request)
        stream = body.pop("stream", False)
        if not isinstance(stream, bool):
            raise ApiError("`stream` must be true or false", param="stream")
        video_request, model = service.create_request(body)
        job = service.start(video_request if not stream else msgspec.structs.replace(video_request, stream=True), model)
        if stream:
            return StreamingResponse(
                service.stream(job), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
            )
        return service.answer(job)

    async def extend(service: VideoService, request: Request) -> Response:
        body = await read_body(request)
        stream = body.pop("stream", False)
        video_request, model, source = service.extension_request(body)
        job = service.start(msgspec.structs.replace(video_request, stream=bool(stream)), model, extended_from=source.id)
        if stream:
            return StreamingResponse(service.stream(job), media_type="text/event-stream")
        return service.answer(job)

    async def remix(service: VideoService, request: Request, video_id: str) -> Response:
        body = await read_body(request)
        source = service.get(video_id)
        if not isinstance(body.get("prompt"), str):
            raise ApiError("`prompt` is required", param="prompt")
        fields = {k: v for k, v in msgspec.to_builtins(source.request).items() if k not in ("job", "continue_from")}
        fields["prompt"] = body["prompt"]
        if source.plan is not None:  # the source's resolved settings, so only the prompt differs
            fields.update(
                num_frames=source.plan.num_frames,
                height=source.plan.height,
                width=source.plan.width,
                num_inference_steps=source.plan.steps,
                guidance_scale=source.plan.guidance,
            )
        job = service.start(service._validated(fields), source.model, remixed_from=source.id)
        return service.answer(job)

    async def retrieve(service: VideoService, request: Request, video_id: str) -> Response:
        return service.answer(service.get(video_id))

    async def listing(service: VideoService, request: Request) -> Response:
        q = request.query_params
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError("`order` must be asc or desc", param="order")
        try:
            limit = int(q.get("limit", LIST_LIMIT[0]))
        except ValueError:
            raise ApiError("`limit` must be an integer", param="limit") from None
        if not 1 <= limit <= LIST_LIMIT[1]:
            raise ApiError(f"`limit` must be 1..{LIST_LIMIT[1]}", param="limit")
        return JSONResponse(service.page(q.get("after"), limit, order))

    async def delete(service: VideoService, request: Request, video_id: str) -> Response:
        await service.delete(video_id)
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    async def content(service: VideoService, request: Request, video_id: str) -> Response:
        job = service.get(video_id)
        variant = request.query_params.get("variant", "video")
        if variant not in ("video", "thumbnail", "spritesheet"):
            raise ApiError(f"`variant` must be video, thumbnail or spritesheet, got {variant!r}", param="variant")
        if job.status != "completed":
            raise ApiError(f"video {job.id} is {job.status}; content exists once it is completed")
        if job.mp4 is None:
            raise ApiError(f"the content of video {job.id} has expired", HTTPStatus.NOT_FOUND)
        if variant == "video":
            return Response(job.mp4, media_type="video/mp4")
        make = thumbnail_png if variant == "thumbnail" else spritesheet_png
        return Response(await asyncio.to_thread(make, job.mp4), media_type="image/png")

    async def generate_sync(service: VideoService, request: Request) -> Response:
        body = await read_body(request)
        model = service._model(body)
        job = service.start(service._validated(body), model)
        try:
            await job.done.wait()
        except asyncio.CancelledError:  # the client went away: so does its video
            job.task.cancel()
            raise
        if job.status != "completed":
            status = (
                HTTPStatus.BAD_REQUEST if job.error["code"] == "invalid_request" else HTTPStatus.INTERNAL_SERVER_ERROR
            )
            raise ApiError(job.error["message"], status)
        answer = {**job.result, "id": job.id, "video": base64.b64encode(job.mp4).decode("ascii")}
        return JSONResponse(answer)

    add = router.add_api_route
    add(SYNC_PATH, guarded(generate_sync), methods=["POST"], summary="Generate a video, synchronously (MotionCache)")
    add(f"{VIDEOS_PATH}/extensions", guarded(extend), methods=["POST"], summary="Extend a completed video")
    add(VIDEOS_PATH, guarded(create), methods=["POST"], summary="Create a video job")
    add(VIDEOS_PATH, guarded(listing), methods=["GET"], summary="List video jobs")
    add(VIDEOS_PATH + "/{video_id}", guarded(retrieve), methods=["GET"], summary="Retrieve a video job")
    add(VIDEOS_PATH + "/{video_id}", guarded(delete), methods=["DELETE"], summary="Delete a video job")
    add(VIDEOS_PATH + "/{video_id}/content", guarded(content), methods=["GET"], summary="Download video content")
    add(VIDEOS_PATH + "/{video_id}/remix", guarded(remix), methods=["POST"], summary="Remix a video")
    return router
