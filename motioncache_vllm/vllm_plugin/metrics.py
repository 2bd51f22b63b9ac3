"""MotionCache figures on vLLM's Prometheus ``/metrics`` (API server process).

The pool lives in the worker (the EngineCore process under ``vllm serve``); the API
server cannot read it. Its figures reach the API process the way the video does: the
worker puts them in the stats of every finished request (``VideoWorker.run``), and the IO
processor's ``post_process`` (API process) records them here. So the counters are exact
sums over served requests, and the pool gauges are the worker's values as of the latest
finished request (a snapshot, not a live reading). With one API server vLLM serves the
default ``prometheus_client`` registry at ``/metrics``, which is where these are registered.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_last_evictions_total = 0


def _get() -> dict[str, Any]:
    global _metrics
    if _metrics is None:
        from prometheus_client import Counter, Gauge

        _metrics = {
            "videos": Counter("motioncache_videos", "Videos generated", ["policy"]),
            "token_steps": Counter(
                "motioncache_token_steps", "Token-steps of finished videos if every token were computed every step"
            ),
            "token_steps_computed": Counter(
                "motioncache_token_steps_computed", "Token-steps actually computed (the rest came from the cache)"
            ),
            "evictions": Counter("motioncache_pool_evictions", "Blocks evicted from the worker's activation pool"),
            "in_use": Gauge(
                "motioncache_pool_in_use_bytes", "Activation pool bytes in use (at the latest finished video)"
            ),
            "peak": Gauge("motioncache_pool_peak_bytes", "Peak activation pool bytes in use since the worker started"),
            "budget": Gauge("motioncache_pool_budget_bytes", "Activation pool budget in bytes (+Inf: unbounded)"),
        }
    return _metrics


def record(stats: Mapping[str, Any]) -> None:
    """Account one finished video (its ``stats`` as made by ``VideoWorker.run``)."""
    global _last_evictions_total
    with _lock:
        m = _get()
        m["videos"].labels(policy=str(stats.get("policy", "unknown"))).inc()
        m["token_steps"].inc(max(int(stats.get("token_steps_total", 0)), 0))
        m["token_steps_computed"].inc(max(int(stats.get("token_steps_computed", 0)), 0))
        total = stats.get("pool_evictions_total")
        if total is not None:  # cumulative in the worker: add what is new since the last report
            if int(total) > _last_evictions_total:
                m["evictions"].inc(int(total) - _last_evictions_total)
                _last_evictions_total = int(total)
        if stats.get("pool_in_use_bytes") is not None:
            m["in_use"].set(int(stats["pool_in_use_bytes"]))
        if stats.get("pool_peak_bytes") is not None:
            m["peak"].set(int(stats["pool_peak_bytes"]))
        budget = stats.get("pool_budget_bytes")
        m["budget"].set(math.inf if budget is None else int(budget))


_serving: dict[str, Any] | None = None


def _serving_metrics() -> dict[str, Any]:
    global _serving
    if _serving is None:
        from prometheus_client import Counter, Gauge

        _serving = {
            "requests": Counter(
                "motioncache_requests_ended_early",
                "Video requests that did not run to the end: cancelled (client gone or job deleted), "
                "timed_out (past serve_request_timeout_s), refused (over the memory budget)",
                ["reason"],
            ),
            "admitted": Gauge("motioncache_admitted_bytes", "Peak-memory estimate of the video requests admitted now"),
            "budget": Gauge("motioncache_memory_budget_bytes", "Memory budget of the video requests running at once"),
            "waiting": Gauge("motioncache_requests_waiting", "Video requests waiting for memory"),
        }
        for reason in ("cancelled", "timed_out", "refused"):
            _serving["requests"].labels(reason=reason)  # shown at 0 from the start
    return _serving


def count_request(reason: str) -> None:
    """One request ended early: ``cancelled``, ``timed_out`` or ``refused``."""
    with _lock:
        _serving_metrics()["requests"].labels(reason=reason).inc()


def set_admission(admitted_bytes: int, budget_bytes: int, waiting: int) -> None:
    with _lock:
        m = _serving_metrics()
        m["admitted"].set(admitted_bytes)
        m["budget"].set(budget_bytes)
        m["waiting"].set(waiting)
