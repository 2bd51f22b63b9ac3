"""Typed configuration: the one home of every setting (msgspec Structs, torch-free).

- :class:`GenerationRequest`: one video (prompt, size, steps, guidance, seed).
- Policy configs (:class:`NoneConfig`, :class:`TeaCacheConfig`, :class:`FlowCacheConfig`,
  :class:`MotionConfig`, :class:`MagCacheConfig`, :class:`TokenRateConfig`,
  :class:`MagRefreshConfig`, :class:`StepErrorConfig`): a tagged union, tag field ``policy``
  (``{"policy": "motion", "threshold": 0.2}``); per request.
- :class:`PoolConfig`: what fixes the activation pool (slot size, budget, eviction, slot
  dtypes); engine-wide, shared by every request of a worker.
- :class:`CacheConfig`: a request's cache settings = one policy config + the pool config.

Every entry point decodes its input once (:func:`decode_policy`, :meth:`CacheConfig.decode`,
``msgspec.convert`` into :class:`PoolConfig`) and maps :class:`ConfigError` to its own
error form (CLI: one line, exit 2; HTTP: 400; engine start-up: ValueError). Adding a
setting = one field here (with its docstring: the CLI help) + the code that uses it.
"""

from __future__ import annotations

import ast
import functools
import inspect
from typing import Annotated, Any, Literal, Mapping, Union, get_args

import msgspec

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PoolDtype = Literal["float32", "float16", "bfloat16", "int8", "int4"]
POOL_DTYPES: tuple[str, ...] = get_args(PoolDtype)
Eviction = Literal["motion", "lru", "admit"]
EVICTIONS: tuple[str, ...] = get_args(Eviction)
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Threshold = Annotated[float, msgspec.Meta(ge=0.0, le=1e6)]  # finite: NaN and inf are refused


class ConfigError(ValueError):
    """A setting that does not fit its Struct; entry points turn it into their error form."""


class UnknownPolicyError(ConfigError):
    """A policy name that is not registered."""


class InvalidPolicyConfig(ConfigError):
    """Policy settings that do not fit the policy's config."""


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
    cfg_batched: bool | None = None
    """The chunked runtime ran both CFG branches of a step as one call (PoolConfig.cfg_batched)."""
    # cache figures (chunked runtime)
    token_steps_total: int | None = None
    token_steps_computed: int | None = None
    commit_token_passes: int | None = None
    ideal_speedup: float | None = None
    full_steps: int | None = None
    partial_steps: int | None = None
    skipped_steps: int | None = None
    forced_blocks: int | None = None
    scene_cuts: list[int] | None = None
    """Chunks the scene-cut guard found to be cuts (computed in full there, ``cut_full_every``)."""
    scene_cut_band: list[int] | None = None
    """Chunks in the guard's band below its cut threshold (``cut_band_every``: computed in full)."""
    chunk_changes: list[float] | None = None
    """The guard's signal of chunks 1, 2, ...: 1 - corr(first-step x0 estimate, previous frame)."""
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


# -- policy configs (per request) -----------------------------------------------------


class PolicyConfigBase(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="policy"):
    """Base of every policy config; the tag (``policy``) is the registered policy name.

    The scene-cut guard's fields are here because the runtime applies the guard to every
    policy alike (``runtime/chunked.py`` ``DenoiseRun._check_cut``): a chunk whose content
    jumps against the previous chunk (above ``cut_threshold``) runs in full whatever the policy
    decides (every ``cut_full_every``-th step; 1 = all), and a chunk in the band below it
    (above ``cut_band_threshold``) every ``cut_band_every``-th step (1 = all)."""

    cut_threshold: Annotated[float, msgspec.Meta(gt=0.0, le=2.0)] = 0.9
    """Scene-cut guard: a chunk is a cut where 1 - corr between its first-step estimate of its
    first frame and the previous chunk's last frame, both averaged onto a ``cut_grid`` grid,
    is above this (0 = the same picture, 1 = unrelated, 2 = inverted)."""
    cut_grid: Annotated[int, msgspec.Meta(ge=2, le=64)] = 4
    """Scene-cut guard: the frames are compared on a ``cut_grid`` x ``cut_grid`` grid of cell
    means (coarse enough that the first step's noise averages out and motion stays local)."""
    cut_full_every: Annotated[int, msgspec.Meta(ge=0)] = 1
    """On a cut chunk every n-th step (from its first) runs in full whatever the policy decides
    (1: the whole chunk in full, the default; 2: every other step; 0: guard off, band too)."""
    cut_band_threshold: Annotated[float, msgspec.Meta(gt=0.0, le=2.0)] = 0.7
    """Scene-cut guard's band: a chunk whose change is above this but not above
    ``cut_threshold`` may be a cut (the first step's estimate is not yet decisive there) and
    gets the ``cut_band_every`` action; must not exceed ``cut_threshold``."""
    cut_band_every: Annotated[int, msgspec.Meta(ge=0)] = 1
    """In the band every n-th step of the chunk runs in full (1: the whole chunk, the default:
    every other step left a held-out cut in the band 13 dB short; 2: every other step, cheaper
    where the band fires without a cut; 0: no band)."""

    def __post_init__(self) -> None:
        if self.cut_band_every and self.cut_band_threshold > self.cut_threshold:
            raise ValueError(
                f"cut_band_threshold ({self.cut_band_threshold}) must not exceed cut_threshold "
                f"({self.cut_threshold}): lower it too, or set cut_band_every=0 - at `$.cut_band_threshold`"
            )

    @property
    def name(self) -> str:
        return type(self).__struct_config__.tag


class NoneConfig(PolicyConfigBase, tag="none"):
    """``none``: full compute every step (no knobs of its own; the guard's change nothing)."""


class TeaCacheConfig(PolicyConfigBase, tag="teacache"):
    """``teacache``: whole-step reuse per chunk (TeaCache)."""

    threshold: Threshold = 0.1
    """Accumulated rescaled distance that triggers a recompute (higher = faster)."""
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] = 4
    """First steps of every chunk that always run in full."""
    coefficients: list[float] | None = None
    """Rescale polynomial (highest power first); None = the model's (see policies/calibration.py)."""


class FlowCacheConfig(PolicyConfigBase, tag="flowcache"):
    """``flowcache``: token-level reuse per chunk (FlowCache)."""

    threshold: Threshold = 0.1
    """tau: accumulated need at which a token wants a recompute (0 = every step)."""
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] = 4
    """First steps of every chunk that always run in full."""
    vote_fraction: Fraction = 0.5
    """Share of a block's tokens (across the chunk's frames) that must need an update."""
    min_update_ratio: Fraction = 0.4
    """Below this share of selected blocks the step is skipped and the need kept."""
    coefficients: list[float] | None = None
    """Rescale polynomial (highest power first); None = the model's (see policies/calibration.py)."""


class MotionConfig(FlowCacheConfig, tag="motion"):
    """``motion``: MotionCache = FlowCache with motion-weighted need."""

    alpha: Fraction = 0.6
    """Lowest motion weight (static tokens); 1 disables motion weighting (= flowcache)."""
    phase1_updates: Annotated[int, msgspec.Meta(ge=0)] = 6
    """Compute events with W = 1 before motion weights switch on (K)."""


class MagCacheConfig(PolicyConfigBase, tag="magcache"):
    """``magcache``: MagCache's whole-step skip rule with calibrated magnitude ratios."""

    threshold: Threshold = 0.12
    """Accumulated magnitude error below which steps are skipped (diffusers' default: 0.06)."""
    max_skip_steps: Annotated[int, msgspec.Meta(ge=0)] = 3
    """At most this many skipped steps in a row (K in the paper)."""
    retention_ratio: Fraction = 0.2
    """Share of each chunk's first steps that always run in full."""
    mag_ratios: list[float] | None = None
    """Ratios per step (resampled to the schedule); None = the model's calibrated ones."""


class TokenRateConfig(PolicyConfigBase, tag="tokenrate"):
    """``tokenrate``: each spatial block recomputed at the rate its own residual changes."""

    threshold: Threshold = 0.3
    """Predicted relative change of a block's residual at which it is recomputed."""
    warmup_steps: Annotated[int, msgspec.Meta(ge=1)] = 4
    """First steps of every chunk that always run in full (they seed the rates)."""
    join_fraction: Fraction = 0.5
    """When a step recomputes some blocks, blocks at this share of the threshold join it."""
    min_update_ratio: Fraction = 0.0
    """A partial step of fewer blocks than this share is deferred (the need is kept) ...
    (0 = off: deferring measured worse here, 24.3 vs 41.1 dB at similar work)"""
    defer_limit: Annotated[float, msgspec.Meta(ge=1.0)] = 2.0
    """... unless a block's predicted change reaches this multiple of the threshold."""
    full_ratio: Fraction = 0.75
    """At or above this share of blocks the whole step is computed."""
    min_weight: Annotated[float, msgspec.Meta(ge=0.0)] = 0.25
    """Lowest weight of a token: its rate over the chunk's mean rate, clipped here ..."""
    max_weight: Annotated[float, msgspec.Meta(ge=1.0)] = 4.0
    """... and here."""
    rate_smoothing: Fraction = 0.5
    """Weight of the newest rate measurement (1 = only the latest)."""
    coefficients: list[float] | None = None
    """Rescale polynomial of the distance (highest power first); None = the model's."""


class MagRefreshConfig(PolicyConfigBase, tag="magrefresh"):
    """``magrefresh``: MagCache's step rule decides when to compute; per-token measured rates
    decide which blocks a step it skips refreshes (a hybrid; see policies/magrefresh.py)."""

    threshold: Threshold = 0.24
    """Mean accumulated magnitude error (per token, rate-weighted) below which steps are skipped."""
    max_skip_steps: Annotated[int, msgspec.Meta(ge=0)] = 5
    """At most this many steps in a row without a full step (skipped or refresh steps)."""
    retention_ratio: Fraction = 0.2
    """Share of each chunk's first steps that always run in full (they seed the rates)."""
    refresh_fraction: Fraction = 0.25
    """Share of blocks (the largest accumulated error) recomputed at a step the rule skips
    (0 = plain MagCache)."""
    refresh_within: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Refresh only in the first this-many steps after a full step, while the other tokens'
    K/V (which a partial step attends to as they were) are still recent (0 = any step)."""
    refresh_share: Fraction = 0.0
    """Refresh only when the chosen blocks hold at least this share of the total error (the
    change is concentrated; 0 = no such gate). Measured unneeded once both CFG branches refresh
    the same blocks (0.4 was needed before: pans collapsed with any refresh)."""
    refresh_level: Annotated[float, msgspec.Meta(ge=0.0)] = 1.0
    """A refresh happens only when the worst block's error reaches this multiple of the threshold."""
    static_fraction: Fraction = 0.0
    """Share of blocks (the smallest accumulated error) left out of a step the rule computes."""
    min_weight: Annotated[float, msgspec.Meta(ge=0.0)] = 0.25
    """Lowest weight of a token: its rate over the chunk's mean rate, clipped here ..."""
    max_weight: Annotated[float, msgspec.Meta(ge=1.0)] = 4.0
    """... and here (then renormalised to mean 1, so without refreshes the rule is MagCache's)."""
    rate_smoothing: Fraction = 0.5
    """Weight of the newest rate measurement (1 = only the latest)."""
    magnitude_exponent: Annotated[float, msgspec.Meta(ge=0.0, le=4.0)] = 2.0
    """A token's weight also grows with (its residual's magnitude / the mean) to this power:
    MagCache's ratio error is relative, so a reused residual's absolute error grows with it."""
    extrapolate: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] = 0.0
    """At a step that reuses a token's residual, add this share of its first-order
    extrapolation from the token's last two computed residuals (0 = reuse as is)."""
    rescale_reused: bool = False
    """At a step that reuses a token's residual, scale it by the product of the calibrated
    magnitude ratios since the token's last compute (the magnitude MagCache predicts)."""
    mag_ratios: list[float] | None = None
    """Ratios per step (resampled to the schedule); None = the model's calibrated ones."""


class StepErrorConfig(PolicyConfigBase, tag="steperror"):
    """``steperror``: skip whole steps while the predicted output error (the step size dt times
    the clip's measured change of the guided residual) stays small (see policies/steperror.py)."""

    threshold: Threshold = 0.1
    """Mean predicted latent error (|dt| x guided residual change, summed over the steps since
    the last compute; the output-error oracle's units) below which a step is skipped."""
    warmup_ratio: Fraction = 0.15
    """Share of each chunk's first steps that always run in full (at least 2; they measure the
    clip's rate): 3 of 20 steps, 5 of 30 (0.2 = 6 of 30 until session 16). The first-order
    estimate underprices early steps, whose error later steps carry on (with 4 of 30 a pan fell
    from 41.9 to 29.7 dB before the calibrated skip sensitivity priced them); 5 of 30 reached
    further at the band's top on held-out set 16 (+3.4 dB over the best single cache at 2.42x over
    chunked full compute, 6 of 30: +0.8) and was +1.1 dB at equal ideal work on sets 13-14, but
    3 of 30 collapsed single clips (RESULTS.md, "Session 16")."""
    rate_smoothing: Fraction = 1.0
    """Weight of the newest rate measurement (1 = only the latest: the change per unit of
    schedule distance drifts along a chunk; 0.5 measured 0.3-0.6 dB worse at 2.5-3x)."""
    max_skip_steps: Annotated[int, msgspec.Meta(ge=0)] = 0
    """At most this many skipped steps in a row (0 = no limit)."""
    coefficients: list[float] | None = None
    """Rescale polynomial of the schedule distance (highest power first); None = the model's."""
    schedule: Literal["teacache", "magcache", "measured"] = "teacache"
    """The calibrated curve the schedule distance D sums per step: ``teacache`` = the rescale
    polynomial of relL1(e0) (the model's TeaCache fit); ``magcache`` = ``|1 - gamma_k|`` of the
    model's MagCache residual-magnitude ratios; ``measured`` = the model's mean change of the
    guided residual per step under full compute (``guided_change``). The last two come from
    ``motioncache calibrate``; a model without them runs every step in full, as ``magcache``
    does. Only the curve's shape matters: the clip's measured rate per unit of D absorbs its scale."""
    amplification: Annotated[float, msgspec.Meta(ge=0.0, le=100.0)] = 1.0
    """Second-order term: later steps carry a latent error on, growing by this rate per unit of
    sigma, so an error made at step k counts ``exp(amplification * sigma_(k+1))`` times (0 = the
    plain first-order sum). 1 beat 0 by a median +0.3-0.6 dB at 2.5-3x ideal on two caption
    sets (2 overpriced early steps: worse at 2.5-3x; RESULTS.md, "Session 8, later")."""
    second_order: Literal["auto", "exp", "measured"] = "auto"
    """How a skipped step's error is carried on by the later steps: ``exp`` = the factor
    ``exp(amplification * sigma_(k+1))``; ``measured`` = the model's calibrated skip sensitivity
    (``skip_sensitivity``: final error of skipping step k alone per unit of its first-order error;
    ``motioncache calibrate --sensitivity``; asked for explicitly, a model without it runs every
    step in full); ``auto`` (default) = ``measured`` where the model has the curve (both shipped
    models do), else ``exp``. ``measured`` beat ``exp`` at 2.5x ideal work on four caption sets,
    one of them held out (RESULTS.md, "Session 9")."""
    refresh_fraction: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    """Spatial part, at a step the rule skips: recompute this share of the blocks with the
    largest predicted error (``dt x rate[p] x D[p]`` summed since each token's own last compute;
    their error and distance restart), a partial step; 0 (the default since session 16) = whole
    steps only, a flat recompute map. 0.05 makes the map follow motion (median Spearman 0.51-0.58
    over moving objects on held-out sets 10-15) at +0.25 dB over whole steps at about equal ideal
    work (30 held-out clips), but its partial steps cost 11-13% of the wall clock on the embedded model
    (a partial call costs ~0.4 of a full one: weight reads and per-op dispatch, not tokens), so on
    the wall clock whole steps were ahead on held-out sets 10-15 (RESULTS.md, "Session 16"). 0.1
    (the default of sessions 13-15) refreshed more and collapsed single chunks of a pan, a bounce
    and a fast clip (sets 10 and 11, "Session 15")."""
    refresh_within: Annotated[int, msgspec.Meta(ge=0)] = 2
    """Refresh only in the first this-many steps after a computed step, while the other tokens'
    K/V (which a partial step attends to as they were) are recent (0 = at any skipped step)."""
    refresh_share: Fraction = 0.0
    """Refresh only when the chosen blocks hold at least this share of the predicted error (the
    error is concentrated; 0 = no such gate)."""
    refresh_keep: Fraction = 0.0
    """Share of a refreshed token's accumulated predicted error that it keeps: a refresh attends
    to the other tokens' K/V as cached (stale), so it is not exact (the oracle's staleness cost);
    0 = the refresh counts as exact, so the step rule defers the next full step by all it
    removed; 1 = the error summed so far stands (only the tokens' later growth restarts)."""
    static_fraction: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    """Spatial part, at a step the rule computes: leave out this share of the blocks with the
    smallest predicted error (they keep accumulating it), a partial step; 0 = all blocks."""


PolicyConfig = Union[
    NoneConfig,
    TeaCacheConfig,
    FlowCacheConfig,
    MotionConfig,
    MagCacheConfig,
    TokenRateConfig,
    MagRefreshConfig,
    StepErrorConfig,
]
"""The built-in policy configs as one tagged union (``msgspec.convert(data, PolicyConfig)``)."""

_POLICY_CONFIGS: dict[str, type[PolicyConfigBase]] = {c.__struct_config__.tag: c for c in get_args(PolicyConfig)}


def register_policy_config(cls: type[PolicyConfigBase]) -> type[PolicyConfigBase]:
    """Make a policy config (of a policy registered elsewhere, e.g. a research one) decodable."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} needs a string tag (class {cls.__name__}(PolicyConfigBase, tag='name'))")
    if _POLICY_CONFIGS.get(tag, cls) is not cls:
        raise ValueError(f"policy config {tag!r} is already registered by {_POLICY_CONFIGS[tag].__qualname__}")
    _POLICY_CONFIGS[tag] = cls
    return cls


def policy_config_class(name: str) -> type[PolicyConfigBase]:
    try:
        return _POLICY_CONFIGS[name]
    except KeyError:
        valid = ", ".join(sorted(_POLICY_CONFIGS))
        raise UnknownPolicyError(f"unknown cache policy {name!r}; valid policies: {valid}") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["threshold=0.2", "alpha=1"]`` -> ``{"threshold": 0.2, "alpha": 1}`` (values as JSON, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidPolicyConfig(f"policy setting {item!r} is not of the form key=value")
        try:
            out[key.strip()] = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            out[key.strip()] = raw
    return out


def decode_policy(name: str, overrides: Mapping[str, Any] | None = None) -> PolicyConfigBase:
    """The typed config of policy ``name`` with ``overrides`` (one ``msgspec.convert``;
    unknown keys and out-of-range values raise :class:`InvalidPolicyConfig`)."""
    cls = policy_config_class(name)
    try:
        return msgspec.convert({**(overrides or {}), "policy": name}, cls)
    except msgspec.ValidationError as exc:
        fields = ", ".join(f.name for f in msgspec.structs.fields(cls)) or "(none)"
        raise InvalidPolicyConfig(f"policy {name!r}: {exc}; its fields: {fields}") from None


# -- pool config (engine-wide) ---------------------------------------------------------


class PoolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The activation pool and how the CFG branches use it: one pool per worker, shared by
    its requests; these settings fix its slot layout and size, so they are engine-wide
    (``additional_config`` keys ``cache_<field>``; CLI ``--<field>``)."""

    tile: PositiveInt = 1
    """Spatial block side in tokens (1 = per-token, as in the paper); must divide the token grid."""
    pool_mib: Annotated[float, msgspec.Meta(ge=0.0, le=2.0**30)] | None = None
    """Activation pool budget in MiB; None = unbounded."""
    eviction: Eviction = "motion"
    """When the pool is full: evict by motion (expected reuse) or lru, or admit (no eviction:
    a chunk is cached whole or not at all; for pools shared by many requests)."""
    pool_dtype: PoolDtype = "float32"
    """Storage of cached residuals: float32 (exact), float16, bfloat16, int8 or int4
    (Hadamard-rotated rows, one scale per row): more blocks per MiB."""
    cfg_shared: bool = False
    """The unconditional CFG branch reuses the conditional branch's cache decisions of the
    same step instead of keeping per-branch state."""
    cfg_delta_dtype: PoolDtype | None = None
    """With cfg_shared: one slot per block for both CFG branches, the unconditional residual
    stored as its difference from the conditional one in this dtype (e.g. int4). The
    difference is ~12% of the residual's size, so it takes coarse storage well."""
    cfg_batched: bool = True
    """Run both CFG branches of a step (and of a chunk's commit) as one transformer call, the
    two samples stacked along the batch, instead of one call each: the per-call, per-layer work
    (weights read, op dispatch) is shared, which matters most for partial steps of few tokens
    (a video 1.07-1.13x faster on 2 CPU cores, RESULTS.md "Session 12"). Same cache decisions
    whatever the pool (a pair of branches reuses only when both had all their blocks); frames differ from separate calls by float
    reassociation in the stacked matrix products (at most 1/255 per pixel measured), and a
    video is the same whatever else runs (only the request's own two branches share a call).
    Off: one call per branch, as the stock pipeline does."""

    def __post_init__(self) -> None:
        if self.cfg_delta_dtype is not None and not self.cfg_shared:
            raise ValueError("cfg_delta_dtype needs cfg_shared (both branches must recompute the same blocks)")

    @classmethod
    def decode(cls, options: Mapping[str, Any]) -> PoolConfig:
        """``options`` (field -> value) -> PoolConfig, or :class:`ConfigError`."""
        try:
            return msgspec.convert(dict(options), cls)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"pool settings: {exc}") from None


# -- a request's cache settings --------------------------------------------------------


class CacheConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How the runtime caches one request: its policy config and the pool's settings."""

    policy: PolicyConfig = NoneConfig()
    """The cache policy and its settings (the config's class picks the policy)."""
    pool: PoolConfig = PoolConfig()
    """The activation pool's settings (engine-wide when served)."""

    @classmethod
    def decode(
        cls, policy: str | PolicyConfigBase = "none", policy_config: Mapping[str, Any] | None = None, **pool: Any
    ) -> CacheConfig:
        """The library's entry point: a policy name (+ its overrides) or config, and pool
        fields as keywords, decoded once; raises :class:`ConfigError`.

        >>> CacheConfig.decode("motion", {"threshold": 0.2}, tile=2).policy.threshold
        0.2
        """
        if isinstance(policy, PolicyConfigBase):
            if policy_config:
                raise ConfigError("give the policy's settings inside its config, not as policy_config")
            typed = policy
        else:
            typed = decode_policy(policy, policy_config)
        return cls(policy=typed, pool=PoolConfig.decode(pool))


# -- docs of fields (CLI help) ---------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of ``cls`` and its bases (``field: T = x`` then ``\"\"\"doc\"\"\"``),
    whitespace collapsed: the help text of options generated from a Struct."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in ("builtins", "msgspec") or klass is msgspec.Struct:
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs
