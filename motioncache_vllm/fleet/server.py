"""The fleet's HTTP front: one API over N engine workers (``motioncache serve --workers N``).

Routes: the single server's video routes, from its own code (``vllm_plugin.videos_api``):
OpenAI's Videos API (``POST /v1/videos`` creates a job, ``GET /v1/videos/{id}`` polls it,
``.../content`` downloads it, ``POST /v1/videos/extensions`` continues a completed video
on any worker, list, delete, remix) and the synchronous ``POST /v1/videos/generations``;
plus ``GET /health`` (200 while a worker is ready), ``GET /metrics`` (Prometheus: the
fleet's counters, per-worker gauges, the MotionCache figures of served videos) and
``GET /v1/workers`` (id, node, pid, state, running requests, pool bytes of each worker).

Errors have OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``): 400 for
an invalid request (checked here, before any worker sees it), 404 for an unknown video,
500 when the engine failed the request or no worker could finish it (the message says
which; a job then ends ``failed``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import msgspec
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from motioncache_vllm.fleet.messages import WorkerSpec
from motioncache_vllm.fleet.router import Fleet, FleetConfig, FleetError, FleetUnavailable

logger = logging.getLogger(__name__)

OBJECT_STORE_MIB = 512
"""Object store of a Ray cluster the front starts itself (checkpoints are small)."""


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
        "running": GaugeMetricFamily(
            "motioncache_fleet_worker_running", "Requests routed to a worker", labels=["worker"]
        ),
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


def build_app(fleet: Fleet, settings, model_name: str = "embedded", service_settings=None) -> FastAPI:
    """The FastAPI app of the front. The video routes are the single server's, from the same
    code (``vllm_plugin.videos_api``: OpenAI's Videos API, its jobs and extensions, and the
    synchronous ``/v1/videos/generations``), with the fleet as the engine they submit to.
    ``settings`` is the engines' ``EngineCacheSettings``: requests are validated here
    exactly as an engine's IO processor would, before any worker sees them."""
    from motioncache_vllm.vllm_plugin.events import VideoEvent
    from motioncache_vllm.vllm_plugin.messages import VideoGenerationError, VideoRequest
    from motioncache_vllm.vllm_plugin.metrics import record
    from motioncache_vllm.vllm_plugin.videos_api import VideoService, videos_router
    from motioncache_vllm.vllm_plugin.messages import validate_request

    app = FastAPI(title="motioncache fleet")

    async def submit(request: VideoRequest) -> dict:
        # the job id is the fleet's request id (and the video's id); what the workers get is
        # the bare request: the continuation is the router's (state from the fleet's store)
        bare = msgspec.structs.replace(request, job=None, continue_from=None, stream=False)

        def progress(event) -> None:
            if request.job is not None:
                service.on_event(
                    VideoEvent(
                        job=request.job,
                        units_done=event.units_done,
                        units_total=event.units_total,
                        chunks_done=event.chunk,
                        chunks_total=event.chunks_total,
                    )
                )

        try:
            response = await fleet.generate(
                msgspec.json.encode(bare),
                request_id=request.job,
                continuation=request.continue_from,
                on_progress=progress,
            )
        except (FleetError, FleetUnavailable) as exc:  # the message says why (no traceback: not a bug)
            raise VideoGenerationError(str(exc)) from None
        record(response.get("stats", {}))
        return response

    async def drop_session(video_id: str) -> None:
        fleet.drop_session(video_id)

    def check_model(model: str) -> str | None:
        return None if model == model_name else f"the model `{model}` does not exist; served: ['{model_name}']"

    service = VideoService(
        submit=submit,
        validate=lambda body: validate_request(body, settings),
        model_name=model_name,
        settings=service_settings,
        check_model=check_model,
        drop_session=drop_session,
    )
    app.state.motioncache_videos = service
    app.include_router(videos_router(lambda request: request.app.state.motioncache_videos))

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

    app.state.fleet = fleet
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
            num_cpus=num_cpus,
            object_store_memory=OBJECT_STORE_MIB * 2**20,
            include_dashboard=False,
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
    service_settings=None,
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
            app = build_app(fleet, settings, served_model_name, service_settings)
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
