"""Limits of one video request, shared by the CLI, the Python API and the server (no torch).

Three questions, answered the same way on every entry point:

- :func:`check_request`: is the request well formed for this model (sizes divisible by the
  model's spatial factor, a caption that is not blank, finite numbers)? Raises
  :class:`InvalidRequest` with one sentence.
- :func:`request_memory`: how many bytes does it need at its peak, from its shape alone
  (K/V of the whole video per CFG branch, latents, one transformer call's activations,
  its share of the pool, the decoded frames and their copies on the way out)?
- :func:`check_memory`: can it ever fit the memory budget? Raises :class:`RequestTooLarge`
  naming the need and the limit, before anything large is allocated.

The model's numbers come from :class:`ModelGeometry`, read either from a loaded pipeline or
from the JSON files of its folder (the server's front end and ``motioncache generate``
check a request before loading any weights).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

MIB = 2**20

MAX_JSON_DEPTH = 32
"""Deepest JSON nesting a server accepts (a video request nests 3 levels)."""
MAX_BODY_BYTES = 64 * 1024
"""Largest request body a server reads; a request's JSON must fit 4096 bytes anyway."""
DEFAULT_BUDGET_FRACTION = 0.8
"""Default memory budget: this share of the memory available when the budget is derived."""


class InvalidRequest(ValueError):
    """A request that is not well formed for the model (one sentence, for the user)."""


class RequestTooLarge(InvalidRequest):
    """A well-formed request whose peak memory exceeds the budget: it can never run here."""

    def __init__(self, need_bytes: int, limit_bytes: int, detail: str = "") -> None:
        self.need_bytes, self.limit_bytes = need_bytes, limit_bytes
        super().__init__(
            f"the request needs about {need_bytes / MIB:,.0f} MiB at its peak{detail}, over the memory "
            f"limit of {limit_bytes / MIB:,.0f} MiB; ask for fewer frames or a smaller size"
        )


class ModelGeometry(msgspec.Struct, frozen=True, kw_only=True):
    """What request checks and memory estimates need to know about a model."""

    spatial_factor: int
    """Pixels per transformer token along a side (VAE factor x patch size)."""
    vae_spatial: int
    temporal_factor: int
    """Pixel frames per latent frame (``4k+1`` frames -> ``k+1`` latent frames)."""
    causal_block: int
    """Latent frames per AR chunk."""
    layers: int
    heads: int
    head_dim: int
    ffn_dim: int
    latent_channels: int
    default_num_frames: int
    default_height: int
    default_width: int
    default_steps: int
    default_guidance: float

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


# -- geometry ------------------------------------------------------------------------------
def _vae_downsample(vae_config: Mapping[str, Any]) -> list[bool]:
    if "temperal_downsample" in vae_config:  # diffusers' spelling (AutoencoderKLWan)
        return list(vae_config["temperal_downsample"])
    if vae_config.get("_class_name") == "FixedLinearVideoAutoencoder":
        return [True, True]  # a class attribute of the embedded VAE, not in its config
    return [False, True, True]  # diffusers' default when a pipeline has no such field


def geometry_from_configs(
    index: Mapping[str, Any], transformer: Mapping[str, Any], vae: Mapping[str, Any], defaults: Mapping[str, Any]
) -> ModelGeometry:
    """From a diffusers folder's ``model_index.json``, ``transformer/config.json``,
    ``vae/config.json`` and the loader's defaults for folders that carry none."""
    down = _vae_downsample(vae)
    vae_spatial = 2 ** len(down)
    patch = transformer.get("patch_size") or (1, 2, 2)

    def default(name: str):
        return index.get(name, defaults.get(name))

    return ModelGeometry(
        spatial_factor=vae_spatial * int(patch[1]),
        vae_spatial=vae_spatial,
        temporal_factor=2 ** sum(bool(d) for d in down),
        causal_block=max(int(transformer.get("num_frame_per_block") or 3), 1),
        layers=int(transformer["num_layers"]),
        heads=int(transformer["num_attention_heads"]),
        head_dim=int(transformer["attention_head_dim"]),
        ffn_dim=int(
            transformer.get("ffn_dim") or 4 * transformer["num_attention_heads"] * transformer["attention_head_dim"]
        ),
        latent_channels=int(vae.get("z_dim") or transformer.get("in_channels") or 16),
        default_num_frames=int(default("default_num_frames")),
        default_height=int(default("default_height")),
        default_width=int(default("default_width")),
        default_steps=int(default("default_num_inference_steps")),
        default_guidance=float(default("default_guidance_scale")),
    )


def read_geometry(folder: str | Path, defaults: Mapping[str, Any]) -> ModelGeometry:
    """The geometry of a diffusers pipeline folder, from its JSON files only."""
    folder = Path(folder)

    def load(name: str) -> dict:
        path = folder / name
        return json.loads(path.read_text()) if path.is_file() else {}

    return geometry_from_configs(
        load("model_index.json"), load("transformer/config.json"), load("vae/config.json"), defaults
    )


def geometry_of(pipe) -> ModelGeometry:
    """The geometry of a loaded pipeline (a ``MotionCacheSkyReelsPipeline``)."""
    t, c = pipe.transformer.config, pipe.config
    return ModelGeometry(
        spatial_factor=pipe.vae_scale_factor_spatial * int(t.patch_size[1]),
        vae_spatial=pipe.vae_scale_factor_spatial,
        temporal_factor=pipe.vae_scale_factor_temporal,
        causal_block=pipe.causal_block_size,
        layers=int(t.num_layers),
        heads=int(t.num_attention_heads),
        head_dim=int(t.attention_head_dim),
        ffn_dim=int(t.ffn_dim),
        latent_channels=int(t.in_channels),
        default_num_frames=int(c.default_num_frames),
        default_height=int(c.default_height),
        default_width=int(c.default_width),
        default_steps=int(c.default_num_inference_steps),
        default_guidance=float(c.default_guidance_scale),
    )


# -- well-formed requests ------------------------------------------------------------------
def check_finite(value: Any, where: str = "$") -> None:
    """Refuse NaN and infinities anywhere in a JSON-like value (nested dicts and lists too)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where} must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_finite(item, f"{where}[{i}]")


def check_request(
    geometry: ModelGeometry,
    *,
    prompt: str,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance_scale: float | None = None,
    names: Mapping[str, str] | None = None,
) -> None:
    """Refuse what the model cannot run: a blank caption, ``num_frames`` not ``4k+1``, a side
    not a positive multiple of the spatial factor, a non-finite guidance. ``names`` maps
    field names to what the caller calls them (``{"height": "--height"}`` on the CLI)."""
    names = names or {}

    def name(field: str) -> str:
        return names.get(field, field)

    if not prompt.strip():
        raise InvalidRequest(f"{name('prompt')} must not be blank")
    t = geometry.temporal_factor
    if num_frames is not None and (num_frames < 1 or (num_frames - 1) % t):
        lo = max((num_frames - 1) // t * t + 1, 1)
        raise InvalidRequest(
            f"{name('num_frames')} must be of the form {t}k+1 (e.g. {lo} or {lo + t}), got {num_frames}"
        )
    f = geometry.spatial_factor
    for field, value in (("height", height), ("width", width)):
        if value is not None and (value < f or value % f):
            lo = value // f * f
            hint = f"{lo} or {lo + f}" if lo >= f else f"{f}"
            raise InvalidRequest(
                f"{name(field)} must be a positive multiple of {f} for this model (e.g. {hint}), got {value}"
            )
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise InvalidRequest(f"{name('guidance_scale')} must be a finite number, got {guidance_scale}")


# -- memory --------------------------------------------------------------------------------
class MemoryNeed(msgspec.Struct, frozen=True, kw_only=True):
    """Peak bytes of one request, by part (float32 throughout, as the runtime computes)."""

    kv: int
    """K/V of every latent frame, every layer, per CFG branch (kept for the whole request)."""
    latents: int
    call: int
    """One transformer call on a chunk: hidden states, FFN, the K/V prefix copied for attention."""
    pool: int
    """The request's residuals in the pool (its active chunk, per branch) when the pool is unbounded."""
    decode: int
    """Decoded frames: the VAE's float output, its uint8 copy, the payload and the encoded video."""

    @property
    def total(self) -> int:
        # the decode happens after the denoising's call buffers are gone, K/V are still held
        return self.kv + self.latents + self.pool + max(self.call, self.decode)


def request_memory(
    geometry: ModelGeometry,
    *,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    guidance_scale: float | None = None,
    pool_bounded: bool = False,
) -> MemoryNeed:
    """Peak memory of one request from its shape (defaults for ``None`` fields)."""
    g = geometry
    frames = num_frames or g.default_num_frames
    height, width = height or g.default_height, width or g.default_width
    guidance = g.default_guidance if guidance_scale is None else guidance_scale
    branches = 2 if guidance > 1.0 else 1
    latent = (frames - 1) // g.temporal_factor + 1
    latent = -(-latent // g.causal_block) * g.causal_block  # padded to whole chunks
    pixel_frames = (latent - 1) * g.temporal_factor + 1
    per_frame = (height // g.spatial_factor) * (width // g.spatial_factor)
    tokens, chunk = latent * per_frame, g.causal_block * per_frame
    f32 = 4
    kv = branches * 2 * g.layers * tokens * g.dim * f32
    latents = 3 * g.latent_channels * latent * (height // g.vae_spatial) * (width // g.vae_spatial) * f32
    # per call: ~12 hidden-size tensors of the chunk (norms, q/k/v, attention out, residual,
    # modulation), 2 FFN-size ones, the K/V prefix made contiguous for SDPA, RoPE tables
    call = chunk * (12 * g.dim + 2 * g.ffn_dim) * f32 + 2 * tokens * g.dim * f32 + 4 * tokens * g.head_dim * f32
    pool = 0 if pool_bounded else branches * chunk * g.dim * f32
    pixels = pixel_frames * height * width * 3
    decode = 2 * pixels * f32 + 4 * pixels
    return MemoryNeed(kv=kv, latents=latents, call=call, pool=pool, decode=decode)


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@functools.cache
def default_budget_bytes(fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """The default memory budget of requests: ``fraction`` of the memory available at the
    first call in this process (cached: every check of a process uses one budget)."""
    available = available_memory_bytes()
    if available is None:  # not Linux: total physical memory, if the platform tells
        import os

        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 8 * 2**30
    return int(available * fraction)


def check_memory(need: MemoryNeed, limit_bytes: int) -> None:
    """Raise :class:`RequestTooLarge` when ``need`` can never fit ``limit_bytes``."""
    if need.total > limit_bytes:
        detail = f" (K/V of the whole video {need.kv / MIB:,.0f} MiB)" if need.kv > need.total / 2 else ""
        raise RequestTooLarge(need.total, limit_bytes, detail)


# -- JSON bodies ---------------------------------------------------------------------------
def json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON text, scanned without parsing; stops counting past ``limit``
    (so a hostile body costs one pass over its bytes, never a recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


# -- server settings -----------------------------------------------------------------------
class ServeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Limits of a server, from ``additional_config`` keys ``serve_*`` (decoded once per process
    at start-up; ``motioncache serve`` flags write them)."""

    serve_memory_budget_mib: float | None = None
    """Sum of the peak memory of the requests running at once; None: derived at start-up
    (:data:`DEFAULT_BUDGET_FRACTION` of the available memory, less a bounded pool)."""
    serve_max_body_bytes: int = MAX_BODY_BYTES
    serve_max_json_depth: int = MAX_JSON_DEPTH
    serve_request_timeout_s: float | None = None
    """Wall-clock limit of one generation request; None: none."""
    serve_batch_steps: bool = False
    """One transformer call per engine step for the units of all running requests whose
    chunks have the same shape (CFG branches included); False: one call per unit and branch.
    Off by default: a batched call's frames depend on which requests share it (within 1/255,
    not bit-equal to ``motioncache generate``, so a fleet's resumed or continued video would
    differ from its no-fault run), and on a 2-core CPU it adds little throughput: a sample costs
    about the same past batch 2 (a request's CFG pair), 0.88-1.15x of sequential at 8 concurrent
    (RESULTS.md "throughput", session 7)."""
    serve_max_batch: int | None = 4
    """Most samples (request x CFG branch) in one batched call; None: no limit. 4: on 2 CPU
    cores, eight requests in-process took 7.0 s in calls of at most 4 samples, 7.9 s in calls
    of all 16 (benchmarks/probes/batch_ceiling.py, RESULTS.md "throughput")."""

    def __post_init__(self) -> None:
        budget, timeout = self.serve_memory_budget_mib, self.serve_request_timeout_s
        if budget is not None and not (0 < budget < math.inf):
            raise ValueError(f"serve_memory_budget_mib must be a positive number, got {budget}")
        if self.serve_max_body_bytes < 1024:
            raise ValueError(f"serve_max_body_bytes must be >= 1024, got {self.serve_max_body_bytes}")
        if self.serve_max_json_depth < 4:
            raise ValueError(f"serve_max_json_depth must be >= 4, got {self.serve_max_json_depth}")
        if timeout is not None and not (0 < timeout < math.inf):
            raise ValueError(f"serve_request_timeout_s must be a positive number, got {timeout}")
        if self.serve_max_batch is not None and self.serve_max_batch < 1:
            raise ValueError(f"serve_max_batch must be >= 1, got {self.serve_max_batch}")

    @classmethod
    def from_additional_config(cls, additional_config: Mapping[str, Any] | None) -> ServeSettings:
        ours = {k: v for k, v in (additional_config or {}).items() if k.startswith("serve_")}
        try:
            return msgspec.convert(ours, cls)
        except msgspec.ValidationError as exc:
            fields = ", ".join(f.name for f in msgspec.structs.fields(cls))
            raise ValueError(f"additional_config: {exc}; server keys: {fields}") from None

    def memory_budget_bytes(self, pool_mib: float | None = None) -> int:
        if self.serve_memory_budget_mib is not None:
            return int(self.serve_memory_budget_mib * MIB)
        return max(default_budget_bytes() - int((pool_mib or 0) * MIB), MIB)
