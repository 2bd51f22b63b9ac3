"""``POST /v1/videos``: a ``vllm.endpoint_plugins`` entry point (``motioncache_videos``).

vLLM 0.32 loads an endpoint plugin in the API server process only, and only when its
entry-point name is listed in ``VLLM_PLUGINS`` (``motioncache serve`` sees to that; see
``vllm/plugins/__init__.py:load_endpoint_plugins``). ``attach_router`` runs while the app
is built, ``init_state`` after vLLM's own handlers exist.

The route is a thin shape adapter over vLLM's ``/pooling`` handler: the body (the same
fields as the ``data`` of a ``/pooling`` request, plus an optional ``model``) becomes an
``IOProcessorRequest`` and goes through the same path (``VideoIOProcessor.parse_data`` ->
engine -> ``post_process``); the answer is the IO processor's output itself, without the
``/pooling`` envelope. Errors are answered as vLLM answers them (``{"error": {"message",
"type", "code", "param"}}``): 400 for invalid requests, 500 for a failed generation.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

VIDEOS_PATH = "/v1/videos"


def _error(message: str | Exception, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> JSONResponse:
    from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

    if isinstance(message, Exception):
        err = create_error_response(message)
    else:
        err = create_error_response(message, HTTPStatus(status).phrase.replace(" ", "") + "Error", status)
    return JSONResponse(err.model_dump(), status_code=err.error.code)


async def create_video(raw_request: Request) -> Response:
    from vllm.entrypoints.pooling.pooling.protocol import IOProcessorRequest

    handler = getattr(raw_request.app.state, "serving_pooling", None)
    if handler is None:
        return _error("this server does not serve a pooling model", HTTPStatus.NOT_IMPLEMENTED)
    try:
        body: Any = json.loads(await raw_request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _error(f"invalid video request: body is not JSON ({exc})")
    if not isinstance(body, dict):
        return _error(f"invalid video request: expected a JSON object, got {type(body).__name__}")
    model = body.pop("model", None)
    if model is not None and not isinstance(model, str):
        return _error("invalid video request: `model` must be a string")
    if model is not None and not handler.models.is_base_model(model):
        names = [m.name for m in handler.models.base_model_paths]
        return _error(f"the model `{model}` does not exist; served: {names}", HTTPStatus.NOT_FOUND)
    try:
        response = await handler(IOProcessorRequest(model=model, data=body), raw_request)
    except Exception as exc:  # noqa: BLE001  (InvalidVideoRequest -> 400, VideoGenerationError -> 500)
        return _error(exc)
    if response.status_code != HTTPStatus.OK or not isinstance(response, JSONResponse):
        return response  # an error answer of vLLM's: pass it on as it is
    return JSONResponse(json.loads(response.body)["data"])


class VideosEndpoint:
    """The ``EndpointPlugin`` (vllm/plugins/endpoint_plugins/interface.py) of ``/v1/videos``."""

    name = "motioncache_videos"
    required_tasks = ("plugin",)
    """Loaded only where the model serves IO-processor (``plugin``) requests."""

    def attach_router(self, app: FastAPI) -> None:
        app.add_api_route(
            VIDEOS_PATH, create_video, methods=["POST"], summary="Generate a video (MotionCache)",
            response_class=JSONResponse,
        )

    async def init_state(self, engine_client, state, args) -> None:
        return None  # everything needed is in the app state vLLM builds (serving_pooling)
