"""``motioncache serve --workers N``: the command line's side of the fleet (kept out of cli.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a ``vllm serve`` command line (``--flag V`` or ``--flag=V``; last wins)."""
    from motioncache_vllm.vllm_plugin.launcher import _flag

    value = None
    for i, arg in enumerate(argv):
        if _flag(arg) == flag:
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value = argv[i + 1]
    return value


def serve_fleet(
    model_dir: str,
    *,
    host: str,
    port: int,
    served_model_name: str,
    extra: Sequence[str],
    cache_policy: str,
    pass_policy: bool,
    cache_pool_mib: float | None,
    settings: dict[str, Any],
    workers: int,
    ray_address: str | None,
    ready_line: str,
    fleet_config: str | None = None,
) -> None:
    """Each worker's engine gets the engine flags ``motioncache serve`` would give vLLM."""
    from motioncache_vllm.fleet.router import FleetConfig
    from motioncache_vllm.fleet.server import launch_fleet
    from motioncache_vllm.vllm_plugin import launcher
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    argv = launcher.serve_argv(
        model_dir,
        host=host,
        port=port,
        served_model_name=served_model_name,
        extra=extra,
        cache_policy=cache_policy if pass_policy else None,
        cache_pool_mib=cache_pool_mib,
    )
    slots = _flag_value(argv, "--max-num-seqs") or launcher.ENGINE_DEFAULTS["--max-num-seqs"]
    try:
        overrides = msgspec.json.decode(fleet_config or "{}")
        if not isinstance(overrides, dict):
            raise ValueError("--fleet-config must be a JSON object")
        config = msgspec.convert({"slots_per_worker": int(slots), **overrides, "workers": workers}, FleetConfig)
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        fields = ", ".join(f.name for f in msgspec.structs.fields(FleetConfig) if f.name != "workers")
        raise SystemExit(f"error: --fleet-config: {exc} (fields: {fields})") from None
    from motioncache_vllm.vllm_plugin.endpoint import ServiceConfig
    from motioncache_vllm.vllm_plugin.videos_api import ServiceSettings

    jobs = ServiceConfig.from_additional_config(settings)  # video_ttl_s, video_store_mib, as the single server
    store = None if jobs.video_store_mib is None else int(jobs.video_store_mib * 2**20)
    launch_fleet(
        model_dir,
        host=host,
        port=port,
        served_model_name=served_model_name,
        serve_argv=argv,
        settings=EngineCacheSettings.from_additional_config(settings),
        config=config,
        ray_address=ray_address,
        ready_line=ready_line,
        service_settings=ServiceSettings(ttl_s=jobs.video_ttl_s, store_bytes=store),
    )
