"""vLLM integration: entry points, the ``--cache-policy`` flag, the video model and its IO processor.

Entry points (``pyproject.toml``):

- ``vllm.general_plugins``: :func:`register`, run by vLLM in every process (API server,
  engine core, workers), possibly more than once;
- ``vllm.io_processor_plugins`` ``motioncache_video``: :func:`io_processor`, returns the
  qualname of :class:`~.processor.VideoIOProcessor` (a submodule named `io_processor`
  would replace this function as the package attribute once imported, and a second engine
  in the same process would find a module where it expects the entry-point function);
- ``vllm.endpoint_plugins`` ``motioncache_videos``: :class:`~.endpoint.VideosEndpoint`,
  ``POST /v1/videos`` (API server only; vLLM loads it only when ``VLLM_PLUGINS`` names it,
  which ``motioncache serve``, i.e. :mod:`.launcher`, arranges).

Only the standard library is imported here: the heavy modules (``model``, ``processor``)
are named as strings and imported by vLLM when it needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

ARCHITECTURE = "MotionCacheVideoModel"
MODEL_QUALNAME = "motioncache_vllm.vllm_plugin.model:MotionCacheVideoModel"
IO_PROCESSOR_NAME = "motioncache_video"
IO_PROCESSOR_QUALNAME = "motioncache_vllm.vllm_plugin.processor.VideoIOProcessor"

__all__ = ["ARCHITECTURE", "IO_PROCESSOR_NAME", "register", "io_processor", "build_model_dir"]

BUSY_LOOP_ENV = "MOTIONCACHE_SHM_BUSY_LOOP_S"
"""Seconds a vLLM shared-memory queue reader spins (``sched_yield``) after a read before it
sleeps on its socket; vLLM's default is 1 s, i.e. the engine-core process spins through every
engine step while it waits for the worker. ``motioncache serve`` sets 0 (see
``launcher.engine_threads_environment``): the worker's threads have every core."""

RECHECK_MS = 50
"""With :data:`BUSY_LOOP_ENV` set, how often (ms) a sleeping queue reader looks at the queue
itself. vLLM's readers sleep on a ZeroMQ notification and, where one got lost, look again
only after ``shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS`` (5 s). Without the busy loop every
read sleeps, and on 2 cores notifications got lost often enough that engine steps ran at one
per 5 s for minutes (tests/test_bench.py's throughput test: over 5 min; 60 s with 50 ms; both
engine core and worker idle, each waiting on the other's queue). A wake-up every 50 ms is a
flag check: no spinning."""


def register() -> None:
    """Register the video architecture and the ``--cache-policy`` flag (idempotent)."""
    from vllm import ModelRegistry

    # lazy string form: the class (and diffusers) is imported only when a model uses it
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_QUALNAME)
    from motioncache_vllm.vllm_plugin.cli_args import install_cache_policy_flag

    install_cache_policy_flag()
    _set_queue_busy_loop(os.environ.get(BUSY_LOOP_ENV))


def _set_queue_busy_loop(value: str | None) -> None:
    """Make readers of vLLM's shared-memory message queues spin ``value`` seconds (see
    :data:`BUSY_LOOP_ENV`) and look at the queue every :data:`RECHECK_MS` while they sleep;
    idempotent, a no-op without the variable or the class."""
    if value is None:
        return
    try:
        from vllm.distributed.device_communicators import shm_broadcast
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:
        return
    # read at every wait (a module global): lowering it here reaches every reader of the process
    recheck = getattr(shm_broadcast, "SHM_READER_RECHECK_INTERVAL_MS", None)
    if isinstance(recheck, int) and recheck > RECHECK_MS:
        shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = RECHECK_MS
    if getattr(SpinCondition, "_motioncache_busy_loop_s", None) is not None:
        return
    seconds = float(value)
    original = SpinCondition.__init__

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.is_reader:
            self.busy_loop_s = seconds

    SpinCondition.__init__ = __init__
    SpinCondition._motioncache_busy_loop_s = seconds


def io_processor() -> str:
    """``vllm.io_processor_plugins`` entry point: the IO processor class, as a qualname."""
    return IO_PROCESSOR_QUALNAME


def build_model_dir(pipeline: str | Path = "embedded", root: str | Path | None = None) -> Path:
    """The vLLM model folder serving ``pipeline``; see :func:`.model_dir.build_model_dir`.
    (A wrapper so that importing this package, as every vLLM process does, stays light.)"""
    from motioncache_vllm.vllm_plugin.model_dir import build_model_dir as build

    return build(pipeline, root)
