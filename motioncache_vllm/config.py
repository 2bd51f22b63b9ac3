"""Typed configuration shared by the CLI, the Python API and (later) the vLLM plugin.

Everything that crosses a process boundary is a ``msgspec.Struct``: validated on
decode, cheap to encode, no pickle of user data.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
POOL_DTYPES = ("float32", "float16", "bfloat16", "int8", "int4")
PoolDtype = Literal["float32", "float16", "bfloat16", "int8", "int4"]


class GenerationRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One video to generate. ``None`` fields take the model's defaults."""

    prompt: Annotated[str, msgspec.Meta(min_length=1, description="Caption of the video.")]
    num_frames: PositiveInt | None = None
    """Pixel frames, of the form 4k+1 (17, 33, 65, ...)."""
    height: PositiveInt | None = None
    width: PositiveInt | None = None
    num_inference_steps: PositiveInt | None = None
    guidance_scale: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    """Classifier-free guidance scale; <= 1 disables the unconditional branch."""
    seed: Annotated[int, msgspec.Meta(ge=0)] = 0


class GenerationReport(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The JSON report of ``motioncache generate`` (key names are a public contract)."""

    model: str
    prompt: str
    seed: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    policy: str
    wall_s: float
    runtime: str = "chunked"
    # cache figures (chunked runtime)
    token_steps_total: int | None = None
    token_steps_computed: int | None = None
    commit_token_passes: int | None = None
    ideal_speedup: float | None = None
    full_steps: int | None = None
    partial_steps: int | None = None
    skipped_steps: int | None = None
    forced_blocks: int | None = None
    pool_peak_bytes: int | None = None
    pool_budget_bytes: int | None = None
    evictions: int | None = None
    kv_cache_bytes: int | None = None
    timings: dict | None = None
    recompute_counts: list[list[list[int]]] | None = None
    """Times each spatial block was recomputed: [latent frame][block row][block col] (a block
    spans its chunk's frames, so the frames of one chunk repeat one count grid)."""
    # --compare: against the stock pipeline of the same seed
    baseline_wall_s: float | None = None
    speedup: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    # --compare with a cache policy: against chunked full compute
    chunked_wall_s: float | None = None
    cache_speedup: float | None = None
    realised_over_ideal: float | None = None


class CacheConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the runtime caches: which policy, at what granularity, in how much memory."""

    policy: str = "none"
    """Registered policy name (``none``, ``teacache``, ``flowcache``, ``motion``, ``magcache``)."""
    policy_config: dict = msgspec.field(default_factory=dict)
    """Overrides of the policy's config fields (validated by the policy)."""
    tile: PositiveInt = 1
    """Spatial block side in tokens (1 = the paper's per-token granularity)."""
    pool_mib: Annotated[float, msgspec.Meta(ge=0.0)] | None = None
    """Activation pool budget in MiB; None = unbounded."""
    eviction: str = "motion"
    """When the pool is full: evict by ``motion`` (expected reuse) or ``lru``, or ``admit``
    (no eviction: a chunk is cached whole or not at all; for pools shared by many requests)."""
    pool_dtype: PoolDtype = "float32"
    """Storage of cached residuals: float32 is exact; float16/bfloat16 halve the bytes per
    block, int8 / int4 (Hadamard-rotated rows, one scale per row) about a quarter / an eighth,
    so a budget holds more blocks."""
    cfg_shared: bool = False
    """The unconditional CFG branch reuses the conditional branch's decision of the same
    step (no scoring of its own) instead of keeping per-branch state."""
    cfg_delta_dtype: PoolDtype | None = None
    """With ``cfg_shared``: keep both CFG branches of a block in one slot, the conditional
    residual (``pool_dtype``) and the unconditional one as its difference from it (this
    dtype). The difference is ~12% of the residual's size here, so it takes coarse storage
    well, and a lossy slot's error is no longer multiplied by the guidance scale (the
    branches' errors were independent; CFG adds them up ~6x). Both branches' blocks are
    then held or evicted together. None: one slot per branch."""

    def __post_init__(self) -> None:
        if self.cfg_delta_dtype is not None and not self.cfg_shared:
            raise ValueError("cfg_delta_dtype needs cfg_shared (both branches must recompute the same blocks)")
