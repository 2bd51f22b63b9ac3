"""``motioncache serve`` as a child process, for benchmarks and tests that drive it over HTTP.

The server runs in its own session (process group), so that stopping it reaches vLLM's
engine-core process too, and nothing else. Readiness is the one line ``motioncache serve``
prints once ``GET /health`` answers (see :func:`.launcher.watch_until_ready`).
Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

READY_PREFIX = "motioncache: serving"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never via a proxy


class ServerError(RuntimeError):
    """The server did not start, or answered a request with an error."""


def motioncache_command() -> list[str]:
    """The ``motioncache`` console script of this interpreter's environment (or ``-m``)."""
    script = Path(sys.executable).with_name("motioncache")
    if script.is_file():
        return [str(script)]
    found = shutil.which("motioncache")
    return [found] if found else [sys.executable, "-m", "motioncache_vllm.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, body: Any, timeout: float = 120, headers: Mapping[str, str] | None = None) -> tuple[int, dict]:
    """POST ``body`` (JSON-encoded unless already bytes); ``(status, decoded answer)``, 4xx/5xx included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get_text(url: str, timeout: float = 30) -> str:
    with _opener.open(url, timeout=timeout) as response:
        return response.read().decode()


class ServerProcess:
    """A running ``motioncache serve``; use :meth:`start`, then :meth:`stop` (or ``with``)."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, ready_line: str) -> None:
        self.proc, self.url, self.log_path, self.ready_line = proc, url, log_path, ready_line

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        log_path: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 300,
    ) -> "ServerProcess":
        """Run ``motioncache serve --port PORT ARGS`` (output to ``log_path``) and wait until it
        is ready. Raises :class:`ServerError` with the log's tail if it exits or times out."""
        port = port or free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*motioncache_command(), "serve", "--port", str(port), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ if env is None else env),
                start_new_session=True,
            )
        server = cls(proc, f"http://127.0.0.1:{port}", log_path, "")
        deadline = time.monotonic() + ready_timeout_s
        try:
            while True:
                lines = server.log_lines()
                ready = next((line for line in lines if line.startswith(READY_PREFIX)), None)
                if ready is not None:
                    server.ready_line = ready
                    return server
                if proc.poll() is not None:
                    raise ServerError(f"server exited with {proc.returncode}:\n" + "\n".join(lines[-30:]))
                if time.monotonic() > deadline:
                    raise ServerError(f"server not ready after {ready_timeout_s:.0f}s:\n" + "\n".join(lines[-30:]))
                time.sleep(0.5)
        except BaseException:
            server.stop()
            raise

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        """SIGTERM (vLLM shuts its engine process down), then SIGKILL the group we started."""
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the server and its children
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
