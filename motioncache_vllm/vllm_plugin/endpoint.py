"""OpenAI's Videos API on vLLM: a ``vllm.endpoint_plugins`` entry point (``motioncache_videos``).

vLLM 0.32 loads an endpoint plugin in the API server process only, and only when its
entry-point name is listed in ``VLLM_PLUGINS`` (``motioncache serve`` sees to that; see
``vllm/plugins/__init__.py:load_endpoint_plugins``). ``attach_router`` runs while the app
is built, ``init_state`` after vLLM's own handlers exist.

The routes and jobs are :mod:`.videos_api`'s; this module plugs vLLM in:

- a job's engine call is vLLM's ``/pooling`` handler with the job's
  :class:`~.messages.VideoRequest` as an ``IOProcessorRequest`` (``VideoIOProcessor.parse_data``
  -> engine -> ``post_process``), so every route shares one validation and one engine path;
  cancelling the job's task aborts its engine request (vLLM aborts a cancelled ``encode``);
- progress and streamed frames come from the worker over :mod:`.events` (the pooling
  path itself only answers at the end); deleting a video tells the worker to drop its
  stored state the same way;
- request bodies are validated by the IO processor's ``parse_data``;
- if serve's guard (``vllm_plugin/guard.py``, issue 15) is installed, every job holds its
  memory admission around the engine call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from http import HTTPStatus
from typing import Any

import msgspec
from fastapi import FastAPI, Request

from motioncache_vllm.vllm_plugin.events import CHANNEL_ENV, EventListener, WorkerCommand
from motioncache_vllm.vllm_plugin.messages import VideoGenerationError, VideoRequest
from motioncache_vllm.vllm_plugin.videos_api import (
    SYNC_PATH,
    VIDEOS_PATH,
    ApiError,
    ServiceSettings,
    VideoService,
    videos_router,
)

logger = logging.getLogger(__name__)

__all__ = ["VIDEOS_PATH", "SYNC_PATH", "VideosEndpoint", "ServiceConfig"]


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Job settings of the API server, from ``additional_config`` keys ``video_*``."""

    video_ttl_s: float = msgspec.field(default=3600.0)
    """Completed content is kept this long (a job's ``expires_at``)."""
    video_store_mib: float | None = 1024.0
    """Budget of kept MP4s; the oldest completed content expires first past it (None: unbounded)."""

    @classmethod
    def from_additional_config(cls, additional_config: dict[str, Any] | None) -> "ServiceConfig":
        ours = {k: v for k, v in (additional_config or {}).items() if k.startswith("video_")}
        try:
            config = msgspec.convert(ours, cls)
        except msgspec.ValidationError as exc:
            raise ValueError(f"additional_config: {exc}") from None
        if not (config.video_ttl_s > 0) or (config.video_store_mib is not None and not config.video_store_mib >= 0):
            raise ValueError("additional_config: video_ttl_s must be > 0 and video_store_mib >= 0")
        return config


def _service(request: Request) -> VideoService:
    service = getattr(request.app.state, "motioncache_videos", None)
    if service is None:
        raise ApiError("this server does not serve a MotionCache video model", HTTPStatus.NOT_IMPLEMENTED)
    return service


def _guard_hold(state):
    """serve's memory admission (``guard.admission(app.state).hold``) when that module exists."""
    try:
        from motioncache_vllm.vllm_plugin import guard
    except ImportError:
        return None
    admission = getattr(guard, "admission", None)
    if admission is None:
        return None
    return lambda request: admission(state).hold(request)


async def _engine_submit(handler, request: VideoRequest) -> dict:
    from vllm.entrypoints.pooling.pooling.protocol import IOProcessorRequest

    response = await handler(IOProcessorRequest(model=None, data=msgspec.to_builtins(request)), None)
    body = json.loads(response.body)
    if response.status_code != HTTPStatus.OK:
        raise VideoGenerationError(body.get("error", {}).get("message", f"engine answered {response.status_code}"))
    return body["data"]


class VideosEndpoint:
    """The ``EndpointPlugin`` (vllm/plugins/endpoint_plugins/interface.py) of the videos routes."""

    name = "motioncache_videos"
    required_tasks = ("plugin",)
    """Loaded only where the model serves IO-processor (``plugin``) requests."""

    def attach_router(self, app: FastAPI) -> None:
        from motioncache_vllm.vllm_plugin import guard

        guard.install(app)  # api key, body limits, JSON depth, admission, cancellation, timeout (every route)
        app.include_router(videos_router(_service))

    async def init_state(self, engine_client, state, args) -> None:
        from motioncache_vllm.vllm_plugin import guard

        await guard.init_state(engine_client, state, args)  # the guard's settings, admission, engine watchdog
        handler = getattr(state, "serving_pooling", None)
        if handler is None:
            return
        vllm_config = engine_client.vllm_config
        config = ServiceConfig.from_additional_config(vllm_config.additional_config)
        processor = handler.io_processors["plugin"].io_processor
        from motioncache_vllm.vllm_plugin.processor import VIDEO_FPS

        def check_model(model: str) -> str | None:
            if handler.models.is_base_model(model):
                return None
            return f"the model `{model}` does not exist; served: {[m.name for m in handler.models.base_model_paths]}"

        listener = None
        prefix = os.environ.get(CHANNEL_ENV)
        if prefix:
            try:
                listener = EventListener(prefix)
            except Exception:  # noqa: BLE001  (jobs still complete; progress then jumps to 100 at the end)
                logger.exception("motioncache: no event channel at %s", prefix)

        async def drop_session(video_id: str) -> None:
            if listener is not None:
                await listener.command(WorkerCommand(drop_session=video_id))

        store = None if config.video_store_mib is None else int(config.video_store_mib * 2**20)
        service = VideoService(
            submit=lambda request: _engine_submit(handler, request),
            validate=processor.parse_data,
            model_name=handler.models.base_model_paths[0].name,
            settings=ServiceSettings(fps=VIDEO_FPS, ttl_s=config.video_ttl_s, store_bytes=store),
            check_model=check_model,
            hold=_guard_hold(state),
            drop_session=drop_session,
        )
        state.motioncache_videos = service
        if listener is not None:
            task = asyncio.get_running_loop().create_task(listener.run(service.on_event), name="motioncache-events")
            state.motioncache_events = (listener, task)  # referenced, so the task is not collected
        with contextlib.suppress(Exception):
            logger.info("motioncache: OpenAI Videos API at %s, synchronous form at %s", VIDEOS_PATH, SYNC_PATH)
