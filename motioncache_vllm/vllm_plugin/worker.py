"""Worker side of the video model, free of vLLM: engine settings, one shared pool, request -> payload.

The vLLM model class (``model.py``) owns one :class:`VideoWorker`; its pooler hands it the
prompt token ids of each finished request.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any, Mapping

import msgspec
import numpy as np
import torch

from motioncache_vllm.config import CacheConfig
from motioncache_vllm.vllm_plugin.messages import CacheOverrides, VideoPayload, VideoRequest

logger = logging.getLogger(__name__)

SETTINGS_PREFIX = "cache_"
"""``additional_config`` keys of this plugin; other keys belong to vLLM or other plugins."""


class EngineCacheSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Engine-wide cache settings, read from ``VllmConfig.additional_config``."""

    cache_policy: str = "none"
    """Default policy of requests (``--cache-policy``)."""
    cache_policy_config: dict[str, Any] = msgspec.field(default_factory=dict)
    """Default policy config overrides."""
    cache_pool_mib: float | None = None
    """Budget of the activation pool shared by all requests of this worker; None = unbounded."""
    cache_tile: int = 1
    """Spatial block side in tokens; engine-wide because it fixes the pool's slot size."""
    cache_eviction: str = "motion"
    """Pool eviction order: ``motion`` or ``lru``."""

    @classmethod
    def from_additional_config(cls, additional_config: Mapping[str, Any] | None) -> "EngineCacheSettings":
        ours = {k: v for k, v in (additional_config or {}).items() if k.startswith(SETTINGS_PREFIX)}
        try:
            settings = msgspec.convert(ours, cls)
        except msgspec.ValidationError as exc:
            fields = ", ".join(f.name for f in msgspec.structs.fields(cls))
            raise ValueError(f"additional_config: {exc}; MotionCache keys: {fields}") from None
        settings.cache_config(CacheOverrides())  # unknown policy names fail at start-up, not per request
        return settings

    def cache_config(self, overrides: CacheOverrides) -> CacheConfig:
        """The cache settings of one request; validates the policy name and config."""
        from motioncache_vllm.policies import make_policy

        if overrides.policy is None:
            policy = self.cache_policy
            policy_config = self.cache_policy_config if overrides.policy_config is None else overrides.policy_config
        else:
            # another policy: the engine's config was written for the engine's policy
            policy, policy_config = overrides.policy, overrides.policy_config or {}
        make_policy(policy, policy_config)  # raises UnknownPolicyError / InvalidPolicyConfig
        return CacheConfig(
            policy=policy, policy_config=dict(policy_config), tile=self.cache_tile, pool_mib=self.cache_pool_mib,
            eviction=self.cache_eviction,
        )


def payload_to_tensor(payload: VideoPayload) -> torch.Tensor:
    """A pooler output must be a tensor: the msgpack bytes as uint8."""
    return torch.frombuffer(bytearray(msgspec.msgpack.encode(payload)), dtype=torch.uint8)


def tensor_to_payload(data: torch.Tensor) -> VideoPayload:
    return msgspec.msgpack.decode(data.cpu().numpy().tobytes(), type=VideoPayload)


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 of uint8 frames in C order: the exact-equality check of a response."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


def request_from_token_ids(token_ids: torch.Tensor) -> VideoRequest:
    """Inverse of the IO processor's encoding: one token id per byte of the request's JSON."""
    ids = token_ids.to(torch.int64)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) > 255:
        raise ValueError("the prompt is not a MotionCache video request (send {'data': {...}} requests)")
    return msgspec.json.decode(ids.to(torch.uint8).numpy().tobytes(), type=VideoRequest)


class VideoWorker:
    """The pipeline, the engine's cache settings and the one pool every request shares."""

    def __init__(self, pipeline: str, additional_config: Mapping[str, Any] | None) -> None:
        from motioncache_vllm.models.loading import load_pipeline
        from motioncache_vllm.runtime.generate import make_pool

        self.settings = EngineCacheSettings.from_additional_config(additional_config)
        self.pipe = load_pipeline(pipeline)
        # one memory budget for the whole worker, whatever the number of requests
        self.pool = make_pool(self.pipe, self.settings.cache_config(CacheOverrides()))

    def run(self, token_ids: torch.Tensor) -> VideoPayload:
        """Generate the request encoded in ``token_ids``; failures become an error payload
        (raising here would fail the whole engine step, i.e. every running request)."""
        from motioncache_vllm.runtime.generate import generate_video

        try:
            request = request_from_token_ids(token_ids)
        except (ValueError, msgspec.DecodeError) as exc:
            # also the path of vLLM's start-up dummy run, whose prompts are all zeros
            return VideoPayload(error=f"undecodable video request: {exc}")
        request_id = uuid.uuid4().hex
        try:
            cache = self.settings.cache_config(request.cache)
            result = generate_video(
                self.pipe, request.generation_request(), cache=cache, pool=self.pool, request_id=request_id
            )
        except Exception as exc:  # noqa: BLE001  (reported to the client, the engine keeps serving)
            logger.exception("video request failed")
            # free what the failed request still holds (its chunks' blocks), or it would leak
            for owner in [o for o in self.pool.tables if o[0] == request_id]:
                self.pool.release(owner)
            return VideoPayload(error=f"{type(exc).__name__}: {exc}")
        frames = np.ascontiguousarray(result.frames, dtype=np.uint8)
        stats = dict(result.stats, policy=cache.policy, wall_s=round(result.wall_s, 4), steps=result.steps,
                     guidance=result.guidance)
        # the shared pool as of now, for the API process's /metrics (see metrics.py)
        stats.update(pool_in_use_bytes=self.pool.stats.in_use_bytes, pool_evictions_total=self.pool.stats.evictions)
        return VideoPayload(frames=frames.tobytes(), shape=frames.shape, stats=stats)
