"""Messages of the vLLM integration (msgspec Structs; nothing here is pickled).

How one video request crosses vLLM's process boundaries::

    client JSON ──parse_data──▶ VideoRequest           (API server / LLM process)
                 ──pre_process──▶ its JSON bytes = prompt token ids (one id per byte)
                                 │ vLLM ships token ids to the engine core and worker as usual
    worker pooler ◀──────────────┘ decodes the VideoRequest, runs the generation
                 ──▶ VideoPayload (msgpack bytes in a uint8 tensor = the pooler output)
    post_process ◀── decodes it ──▶ VideoResponse (JSON: id, base64 mp4, stats)

The request rides in the prompt because ``IOProcessor.merge_pooling_params`` does not
see the request data on the HTTP path, while the prompt reaches the pooler unchanged on
every path (offline, HTTP, with or without multiprocessing).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Mapping

import msgspec
import numpy as np
import torch

from motioncache_vllm.config import (
    CacheConfig,
    ConfigError,
    GenerationRequest,
    NoneConfig,
    PolicyConfig,
    PoolConfig,
    decode_policy,
)
from motioncache_vllm.runtime.snapshot import VideoPlan

MAX_PROMPT_CHARS = 1000
"""Captions longer than this are refused: the request must fit the prompt window of the
model folder (``model_dir.MAX_REQUEST_BYTES``); the text encoder reads 24 tokens anyway."""
MAX_FRAMES = 1025
"""Upper bound on ``num_frames`` (a guard against requests that would run for hours)."""
MAX_SIDE = 2048
"""Upper bound on ``height`` and ``width`` in pixels (SkyReels-V2 720P is 720x1280)."""


class InvalidVideoRequest(ValueError):
    """A video request that does not fit :class:`VideoRequest` (wrong type, unknown field, bad value)."""


class RequestTooLargeError(InvalidVideoRequest):
    """A valid request whose peak memory is over the server's budget (it can never run here)."""


class VideoGenerationError(RuntimeError):
    """The worker could not generate a (valid) request; the engine keeps serving others."""


class CacheOverrides(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Per-request cache settings; unset fields take the engine's (``additional_config``)."""

    policy: str | None = None
    """Registered policy name; default: the engine's ``--cache-policy``."""
    policy_config: dict[str, Any] | None = None
    """Policy config overrides; replace the engine's ``cache_policy_config`` when given."""


class Continuation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Make ``plan`` starting from the worker's stored session ``session`` (a snapshot of
    ``plan`` or of a prefix of it): an extension of a finished video, or the rest of an
    interrupted one. A session the worker no longer holds (evicted, another worker, a
    restart) is regenerated from ``plan``: slower, never an error."""

    session: str
    plan: VideoPlan


class VideoRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The ``data`` of a ``motioncache_video`` request; unset fields take the model's defaults."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PROMPT_CHARS)]
    num_frames: Annotated[int, msgspec.Meta(gt=0, le=MAX_FRAMES)] | None = None
    """Pixel frames, of the form 4k+1 (17, 33, ...)."""
    height: Annotated[int, msgspec.Meta(gt=0, le=MAX_SIDE)] | None = None
    width: Annotated[int, msgspec.Meta(gt=0, le=MAX_SIDE)] | None = None
    num_inference_steps: Annotated[int, msgspec.Meta(gt=0, le=1000)] | None = None
    guidance_scale: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    cache: CacheOverrides = msgspec.field(default_factory=CacheOverrides)
    ticket: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """Opaque id of a serving layer above the engine (the Ray fleet sets it to find a
    request's per-chunk checkpoints); handed to ``VideoWorker``'s hooks, never interpreted."""
    job: str | None = None
    """Set by the server's /v1/videos routes: the worker reports progress under this id and
    keeps the finished video's state (for extensions) under it."""
    stream: bool = False
    """Send each finished chunk's frames as soon as they exist (over the event channel)."""
    continue_from: Continuation | None = None
    """Continue a stored video (extension) instead of starting from noise; ``prompt``,
    ``num_frames`` and ``seed`` then are the new segment's (the plan's last)."""

    def generation_request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            num_frames=self.num_frames,
            height=self.height,
            width=self.width,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
        )


class VideoPayload(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    """Pooler output of one request, worker -> front end (msgpack in a uint8 tensor)."""

    frames: bytes = b""
    """Raw uint8 frames, C order, shape ``shape``: exact, before any video encoding."""
    shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    """(frames, height, width, 3)."""
    stats: dict[str, Any] = msgspec.field(default_factory=dict)
    error: str | None = None
    """Set instead of the frames when the worker could not generate the request."""
    plan: VideoPlan | None = None
    """What the video is made of (the request and its extensions, resolved)."""


class VideoResponse(msgspec.Struct, kw_only=True):
    """What a client gets back (JSON)."""

    id: str
    video: str
    """Base64 of an H.264 mp4 (lossy)."""
    stats: dict[str, Any]
    """Cache figures of the generation (as ``motioncache generate --report``), plus ``wall_s``."""
    num_frames: int
    height: int
    width: int
    frames_sha256: str
    """SHA-256 of the raw uint8 frames (F, H, W, 3) before encoding: compare exactly
    against ``hashlib.sha256(generate_video(...).frames.tobytes())``."""
    frame_sha256: list[str] = msgspec.field(default_factory=list)
    """SHA-256 of each frame: an extension's first frames can be checked against the original's."""
    plan: VideoPlan | None = None
    """What the video is made of (its request resolved, then each extension)."""


def decode_request(data: object) -> VideoRequest:
    """Validate a client's ``data`` (a dict, or JSON text/bytes) into a :class:`VideoRequest`."""
    try:
        if isinstance(data, (str, bytes, bytearray)):
            return msgspec.json.decode(data, type=VideoRequest)
        return msgspec.convert(data, VideoRequest)
    except msgspec.ValidationError as exc:
        fields = ", ".join(f.name for f in msgspec.structs.fields(VideoRequest))
        raise InvalidVideoRequest(f"invalid video request: {exc} (fields: {fields})") from None
    except msgspec.DecodeError as exc:
        raise InvalidVideoRequest(f"invalid video request: not JSON ({exc})") from None


# -- engine settings (additional_config) ------------------------------------------------

SETTINGS_PREFIX = "cache_"
"""``additional_config`` keys of this plugin; other keys belong to vLLM or other plugins."""


class EngineDefaults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The engine's settings that are not the pool's (``additional_config`` keys ``cache_<field>``)."""

    policy: str = "none"
    """Default policy of requests (``--cache-policy``)."""
    policy_config: dict[str, Any] = msgspec.field(default_factory=dict)
    """Default policy config overrides (for the default policy)."""
    session_mib: Annotated[float, msgspec.Meta(ge=0.0, le=2.0**30)] | None = 512.0
    """Budget of finished videos' stored state (for extensions; LRU past it; None: unbounded)."""


class EngineCacheSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Engine-wide cache settings, decoded once from ``VllmConfig.additional_config``: the
    pool every request shares, the default policy config, and the engine's other settings.
    ``cache_<field>`` keys: the fields of :class:`~motioncache_vllm.config.PoolConfig` and
    of :class:`EngineDefaults`."""

    pool: PoolConfig = PoolConfig()
    policy: PolicyConfig = NoneConfig()
    """The default policy config of requests (decoded at start-up: a bad name fails there)."""
    engine: EngineDefaults = EngineDefaults()

    @classmethod
    def from_additional_config(cls, additional_config: Mapping[str, Any] | None) -> EngineCacheSettings:
        """Raises ValueError (naming the MotionCache keys) on a bad setting."""
        ours = {
            k.removeprefix(SETTINGS_PREFIX): v
            for k, v in (additional_config or {}).items()
            if k.startswith(SETTINGS_PREFIX)
        }
        pool_fields = PoolConfig.__struct_fields__
        try:
            pool = PoolConfig.decode({k: v for k, v in ours.items() if k in pool_fields})
            engine = msgspec.convert({k: v for k, v in ours.items() if k not in pool_fields}, EngineDefaults)
            policy = decode_policy(engine.policy, engine.policy_config)
        except (ConfigError, msgspec.ValidationError) as exc:
            keys = ", ".join(SETTINGS_PREFIX + f for f in (*pool_fields, *EngineDefaults.__struct_fields__))
            where = re.sub(r"`\$\.(\w+)`", SETTINGS_PREFIX + r"\1", str(exc))
            raise ValueError(f"additional_config: {where}; MotionCache keys: {keys}") from None
        return cls(pool=pool, policy=policy, engine=engine)

    def cache_config(self, overrides: CacheOverrides) -> CacheConfig:
        """The cache settings of one request (its policy decoded once); raises ConfigError."""
        if overrides.policy is None:
            policy = (
                self.policy
                if overrides.policy_config is None
                else decode_policy(self.policy.name, overrides.policy_config)
            )
        else:  # another policy: the engine's config was written for the engine's policy
            policy = decode_policy(overrides.policy, overrides.policy_config)
        return CacheConfig(policy=policy, pool=self.pool)


def validate_request(
    data: object,
    settings: EngineCacheSettings,
    geometry=None,
    *,
    memory_budget_bytes: int | None = None,
    max_units: int | None = None,
) -> VideoRequest:
    """A client's request data -> :class:`VideoRequest`, checked as the engine would check it:
    the checks every entry point shares (:mod:`motioncache_vllm.limits`: a caption that is
    not blank, frames of the form 4k+1, sides that are multiples of the model's spatial
    factor when its ``geometry`` is known, finite numbers), the peak memory against
    ``memory_budget_bytes``, the units against ``max_units`` (the prompt window), a known
    policy with a valid config. Raises InvalidVideoRequest. The IO processor's ``parse_data``
    and the Ray fleet's front both call it."""
    from motioncache_vllm.limits import InvalidRequest, RequestTooLarge, check_finite

    request = decode_request(data)
    try:
        if geometry is None:  # no model at hand: what holds for every Wan-family model
            check_finite(request.cache.policy_config or {}, "cache.policy_config")
            if not request.prompt.strip():
                raise InvalidRequest("prompt must not be blank")
            if request.num_frames is not None and (request.num_frames - 1) % TEMPORAL_FACTOR:
                lo = (request.num_frames - 1) // 4 * 4 + 1
                raise InvalidRequest(
                    f"num_frames must be of the form 4k+1 (e.g. {lo} or {lo + 4}), got {request.num_frames}"
                )
        else:
            check_video_request(request, geometry, memory_budget_bytes, settings.pool.pool_mib)
            if max_units is not None:
                g = geometry
                work = work_units(
                    request.num_frames or g.default_num_frames,
                    request.num_inference_steps or g.default_steps,
                    g.causal_block,
                    g.temporal_factor,
                )
                if work > max_units:
                    raise InvalidRequest(
                        f"the request has {work} units (chunks x (steps + 1)); this server runs at most "
                        f"{max_units} per request (--max-model-len): ask for fewer frames or steps"
                    )
    except RequestTooLarge as exc:
        raise RequestTooLargeError(f"invalid video request: {exc}") from None
    except InvalidRequest as exc:
        raise InvalidVideoRequest(f"invalid video request: {exc}") from None
    try:
        settings.cache_config(request.cache)
    except ConfigError as exc:
        raise InvalidVideoRequest(f"invalid video request: cache: {exc}") from None
    if request.continue_from is not None:
        plan = request.continue_from.plan
        last = plan.segments[-1] if plan.segments else None
        if last is None or (request.prompt, request.num_frames, request.seed) != (
            last.prompt,
            last.num_frames,
            last.seed,
        ):
            raise InvalidVideoRequest(
                "invalid video request: continue_from.plan must end with this request's prompt, num_frames and seed"
            )
    return request


# -- wire encoding (request in the prompt's token ids, payload in the pooler tensor) -----


def payload_to_tensor(payload: VideoPayload) -> torch.Tensor:
    """A pooler output must be a tensor: the msgpack bytes as uint8."""
    return torch.frombuffer(bytearray(msgspec.msgpack.encode(payload)), dtype=torch.uint8)


def tensor_to_payload(data: torch.Tensor) -> VideoPayload:
    return msgspec.msgpack.decode(data.cpu().numpy().tobytes(), type=VideoPayload)


def frames_digest(frames: np.ndarray) -> str:
    """SHA-256 of uint8 frames in C order: the exact-equality check of a response."""
    return hashlib.sha256(np.ascontiguousarray(frames, dtype=np.uint8).tobytes()).hexdigest()


FILLER_TOKEN = 0
"""Pads a prompt to its request's work length; never a byte of the request's JSON."""

TEMPORAL_FACTOR = 4
"""Frames per latent frame of the Wan-family VAEs (``4k+1`` frames -> ``k+1`` latent frames)."""


def work_units(num_frames: int, steps: int, frames_per_chunk: int, temporal_factor: int = TEMPORAL_FACTOR) -> int:
    """Units of a request in the stepwise runtime: chunks x (denoising steps + 1 commit)."""
    latent = (num_frames - 1) // temporal_factor + 1
    return -(-latent // frames_per_chunk) * (steps + 1)


def request_from_token_ids(token_ids: torch.Tensor) -> VideoRequest:
    """Inverse of the IO processor's encoding: one token id per byte of the request's JSON,
    then filler tokens up to the request's work length."""
    ids = token_ids.to(torch.int64)
    if ids.numel() and int(ids.min()) >= 0:
        nonzero = torch.nonzero(ids != FILLER_TOKEN)
        ids = ids[: int(nonzero[-1]) + 1] if nonzero.numel() else ids[:0]
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) > 255:
        raise ValueError("the prompt is not a MotionCache video request (send {'data': {...}} requests)")
    return msgspec.json.decode(ids.to(torch.uint8).numpy().tobytes(), type=VideoRequest)


def check_video_request(
    request: VideoRequest, geometry, memory_budget_bytes: int | None = None, pool_mib: float | None = None
) -> None:
    """What :class:`VideoRequest`'s types cannot say, for the served model (``geometry``, a
    :class:`~motioncache_vllm.limits.ModelGeometry`): the checks every entry point shares,
    and the memory check against the budget. Raises ``limits.InvalidRequest``."""
    from motioncache_vllm.limits import check_finite, check_memory, check_request, request_memory

    check_finite(request.cache.policy_config or {}, "cache.policy_config")
    check_request(
        geometry,
        prompt=request.prompt,
        num_frames=request.num_frames,
        height=request.height,
        width=request.width,
        guidance_scale=request.guidance_scale,
    )
    if memory_budget_bytes is not None:
        need = request_memory(
            geometry,
            num_frames=request.num_frames,
            height=request.height,
            width=request.width,
            guidance_scale=request.guidance_scale,
            pool_bounded=pool_mib is not None,
        )
        check_memory(need, memory_budget_bytes)
