"""The fleet's HTTP front: one API over N engine workers (``motioncache serve --workers N``).

Routes: ``POST /v1/videos`` (the body and answer of the single server's route),
``GET /health`` (200 while a worker is ready), ``GET /metrics`` (Prometheus: the fleet's
counters, per-worker gauges, and the MotionCache figures of served videos),
``GET /v1/workers`` (id, node, pid, state, running requests, pool bytes of each worker).

Errors have vLLM's shape, ``{"error": {"message", "type", "code", "param"}}``: 400 for an
invalid request (checked here, before any worker sees it), 500 when the engine failed
the request, 503 when no worker could finish it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from http import HTTPStatus

import msgspec
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from motioncache_vllm.fleet.messages import WorkerSpec
from motioncache_vllm.fleet.router import (
    Fleet,
    FleetConfig,
    FleetError,
    FleetUnavailable,
    InvalidContinuation,
    UnknownVideo,
)

logger = logging.getLogger(__name__)

OBJECT_STORE_MIB = 512
"""Object store of a Ray cluster the front starts itself (checkpoints are small)."""


def error_response(message: str, status: HTTPStatus) -> JSONResponse:
    kind = HTTPStatus(status).phrase.replace(" ", "") + "Error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": int(status)}}
    return JSONResponse(body, status_code=int(status))


def _metrics_text(fleet: Fleet) -> bytes:
    """Prometheus text: the process's default registry (MotionCache video figures, recorded
    per finished video as the single server does) plus the fleet's own gauges."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    s = fleet.stats
    families = []
    for name, value, doc in (
        ("requests", s.requests, "Video requests received by the router"),
        ("completed", s.completed, "Requests that finished with a video"),
        ("failed", s.failed, "Requests the engine failed (not retried)"),
        ("unavailable", s.unavailable, "Requests no worker could finish (attempts exhausted)"),
        ("retries", s.retries, "Attempts after a worker died"),
        ("resumed_from_checkpoint", s.resumed_from_checkpoint, "Retries resumed from a per-chunk checkpoint"),
        ("worker_deaths", s.worker_deaths, "Worker deaths seen by the router"),
        ("continuations", s.continuations, "Requests continuing a stored video (continue_from)"),
        ("sessions_regenerated", s.sessions_regenerated, "Continuations whose stored state was evicted"),
        ("session_evictions", fleet.sessions.stats.evictions, "Stored video states evicted (fleet-wide budget)"),
    ):
        families.append(CounterMetricFamily(f"motioncache_fleet_{name}", doc, value=value))
    recover = GaugeMetricFamily(
        "motioncache_fleet_last_recovery_seconds", "Worker death to the request running again elsewhere (latest)"
    )
    recover.add_metric([], s.recoveries_s[-1] if s.recoveries_s else float("nan"))
    families.append(recover)
    held = GaugeMetricFamily("motioncache_fleet_session_bytes", "Bytes of stored video states (fleet-wide)")
    held.add_metric([], fleet.sessions.stats.bytes)
    families.append(held)
    gauges = {
        "running": GaugeMetricFamily("motioncache_fleet_worker_running", "Requests routed to a worker", labels=["worker"]),
        "ready": GaugeMetricFamily("motioncache_fleet_worker_ready", "1 if the worker is ready", labels=["worker"]),
        "pool": GaugeMetricFamily(
            "motioncache_fleet_worker_pool_in_use_bytes", "Activation pool bytes in use (last poll)", labels=["worker"]
        ),
    }
    for w in fleet.workers:
        label = [str(w.worker_id)]
        gauges["running"].add_metric(label, len(w.running))
        gauges["ready"].add_metric(label, 1.0 if w.state == "ready" else 0.0)
        gauges["pool"].add_metric(label, w.info.pool_in_use_bytes if w.info else 0)
    families += gauges.values()

    class _Collector:
        def collect(self):
            return families

    from prometheus_client import CollectorRegistry

    extra = CollectorRegistry()
    extra.register(_Collector())
    return generate_latest(REGISTRY) + generate_latest(extra)


def build_app(fleet: Fleet, settings) -> FastAPI:
    """The FastAPI app of the front; ``settings`` is the engines' ``EngineCacheSettings``
    (requests are validated here exactly as an engine's IO processor would)."""
    from motioncache_vllm.vllm_plugin.messages import InvalidVideoRequest
    from motioncache_vllm.vllm_plugin.metrics import record
    from motioncache_vllm.vllm_plugin.worker import validate_request

    app = FastAPI(title="motioncache fleet")
    served = {"embedded"}

    @app.post("/v1/videos")
    async def create_video(raw: Request) -> Response:
        try:
            body = json.loads(await raw.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error_response(f"invalid video request: body is not JSON ({exc})", HTTPStatus.BAD_REQUEST)
        if not isinstance(body, dict):
            return error_response(
                f"invalid video request: expected a JSON object, got {type(body).__name__}", HTTPStatus.BAD_REQUEST
            )
        model = body.pop("model", None)
        continue_from = body.pop("continue_from", None)
        if continue_from is not None and not isinstance(continue_from, str):
            return error_response("invalid video request: `continue_from` must be a video id", HTTPStatus.BAD_REQUEST)
        if model is not None and model not in served:
            return error_response(f"the model `{model}` does not exist; served: {sorted(served)}", HTTPStatus.NOT_FOUND)
        try:
            request = validate_request(body, settings)
        except InvalidVideoRequest as exc:
            return error_response(str(exc), HTTPStatus.BAD_REQUEST)
        try:
            response = await fleet.generate(msgspec.json.encode(request), continue_from=continue_from)
        except UnknownVideo as exc:
            return error_response(str(exc), HTTPStatus.NOT_FOUND)
        except InvalidContinuation as exc:
            return error_response(str(exc), HTTPStatus.BAD_REQUEST)
        except FleetError as exc:
            return error_response(str(exc), HTTPStatus.INTERNAL_SERVER_ERROR)
        except FleetUnavailable as exc:
            return error_response(str(exc), HTTPStatus.SERVICE_UNAVAILABLE)
        record(response.get("stats", {}))
        return JSONResponse(response)

    @app.get("/health")
    async def health() -> Response:
        ready = sum(w.state == "ready" for w in fleet.workers)
        return JSONResponse({"ready_workers": ready, "workers": len(fleet.workers)}, status_code=200 if ready else 503)

    @app.get("/v1/workers")
    async def workers() -> Response:
        return JSONResponse({"object": "list", "data": fleet.worker_rows()})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(_metrics_text(fleet), media_type="text/plain; version=0.0.4")

    app.state.fleet, app.state.served = fleet, served
    return app


def engine_argv(serve_argv: Sequence[str]) -> list[str]:
    """``launcher.serve_argv``'s engine part: without ``serve MODEL --host H --port P``."""
    argv = list(serve_argv)
    if argv[:1] != ["serve"] or argv[2:3] != ["--host"] or argv[4:5] != ["--port"]:
        raise ValueError(f"unexpected serve command line: {argv[:6]}")
    return argv[6:]


def init_ray(address: str | None, num_cpus: float | None = None) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the local one ``ray start`` made), or
    start a private local one (small object store, no dashboard) when ``address`` is None."""
    import ray

    if address is not None:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=num_cpus, object_store_memory=OBJECT_STORE_MIB * 2**20, include_dashboard=False,
            logging_level=logging.WARNING,
        )


def launch_fleet(
    model_dir: str,
    *,
    host: str,
    port: int,
    served_model_name: str,
    serve_argv: Sequence[str],
    settings,
    config: FleetConfig,
    ray_address: str | None,
    ready_line: str,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Start (or join) Ray, the workers and the HTTP front; serve until interrupted, then
    kill the workers and, if this process started the cluster, shut it down."""
    import ray
    import uvicorn

    from motioncache_vllm.vllm_plugin.launcher import ENV_DEFAULTS

    env = dict(environ if environ is not None else os.environ)
    worker_env = {k: env.get(k, v) for k, v in ENV_DEFAULTS.items()}
    spec = WorkerSpec(worker_id=0, model_dir=model_dir, engine_argv=engine_argv(serve_argv), env=worker_env)
    local = ray_address is None
    init_ray(ray_address, num_cpus=config.workers * config.cpus_per_worker if local else None)

    async def main() -> None:
        fleet = Fleet(spec, config)
        try:
            await fleet.start()
            app = build_app(fleet, settings)
            app.state.served.add(served_model_name)
            server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():
                await asyncio.sleep(0.05)
            if server.started:
                print(ready_line, flush=True)
            await serving
        finally:
            await fleet.stop()

    try:
        asyncio.run(main())
    except RuntimeError as exc:  # a worker failed to start (bad engine flags, no resources)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if ray.is_initialized():
            ray.shutdown()
