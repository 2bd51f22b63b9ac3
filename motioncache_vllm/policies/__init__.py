"""Cache policies behind one interface (:class:`~.base.CachePolicy`), registered by name.

A policy's settings are its config Struct in :mod:`motioncache_vllm.config` (tag = the
policy's name); the policy object is built once per request from that typed config::

    >>> make_policy(MotionConfig(threshold=0.2)).config.threshold
    0.2
    >>> make_policy("motion", {"threshold": 0.2}).config == MotionConfig(threshold=0.2)
    True
"""

from __future__ import annotations

from typing import Any

from motioncache_vllm.config import (
    FlowCacheConfig,
    InvalidPolicyConfig,
    MagCacheConfig,
    MagRefreshConfig,
    MotionConfig,
    NoneConfig,
    PolicyConfigBase,
    StepErrorConfig,
    TeaCacheConfig,
    TokenRateConfig,
    UnknownPolicyError,
    decode_policy,
    parse_overrides,
    register_policy_config,
)
from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation
from motioncache_vllm.policies.flowcache import FlowCachePolicy
from motioncache_vllm.policies.magcache import MagCachePolicy
from motioncache_vllm.policies.magrefresh import MagRefreshPolicy
from motioncache_vllm.policies.motion import MotionPolicy
from motioncache_vllm.policies.none import NonePolicy
from motioncache_vllm.policies.steperror import StepErrorPolicy
from motioncache_vllm.policies.teacache import TeaCachePolicy
from motioncache_vllm.policies.tokenrate import TokenRatePolicy

__all__ = [
    "CachePolicy",
    "Decision",
    "PolicyState",
    "StepObservation",
    "UnknownPolicyError",
    "InvalidPolicyConfig",
    "register_policy",
    "policy_names",
    "get_policy_class",
    "make_policy",
    "decode_policy",
    "parse_overrides",
    "NoneConfig",
    "TeaCacheConfig",
    "FlowCacheConfig",
    "MotionConfig",
    "MagCacheConfig",
    "TokenRateConfig",
    "MagRefreshConfig",
    "StepErrorConfig",
]


_REGISTRY: dict[str, type[CachePolicy]] = {}


def register_policy(cls: type[CachePolicy]) -> type[CachePolicy]:
    """Register a policy class; its ``config_cls`` must be a PolicyConfigBase tagged with its name."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    if not issubclass(cls.config_cls, PolicyConfigBase) or cls.config_cls.__struct_config__.tag != cls.name:
        raise TypeError(f"{cls.__qualname__}.config_cls must subclass PolicyConfigBase with tag={cls.name!r}")
    register_policy_config(cls.config_cls)
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (
    NonePolicy,
    TeaCachePolicy,
    FlowCachePolicy,
    MotionPolicy,
    MagCachePolicy,
    TokenRatePolicy,
    MagRefreshPolicy,
    StepErrorPolicy,
):
    register_policy(_cls)


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_policy_class(name: str) -> type[CachePolicy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown cache policy {name!r}; valid policies: {', '.join(policy_names())}"
        ) from None


def make_policy(
    config: PolicyConfigBase | str,
    overrides: dict[str, Any] | None = None,
    model_coefficients: tuple[float, ...] | None = None,
    model_fit_range: tuple[float, float] | None = None,
    model_mag_ratios: dict[int, tuple[float, ...]] | None = None,
    model_guided_change: dict[int, tuple[float, ...]] | None = None,
    model_skip_sensitivity: dict[int, tuple[float, ...]] | None = None,
) -> CachePolicy:
    """The policy of a decoded config (or of a name + overrides, decoded here), with the
    model's calibration (``make_policy(config, None, *model_calibration(...))``). The runtime
    builds one per request."""
    if isinstance(config, str):
        config = decode_policy(config, overrides)
    elif overrides:
        raise TypeError("overrides go with a policy name; a config already holds its settings")
    return get_policy_class(config.name)(
        config,
        model_coefficients=model_coefficients,
        model_fit_range=model_fit_range,
        model_mag_ratios=model_mag_ratios,
        model_guided_change=model_guided_change,
        model_skip_sensitivity=model_skip_sensitivity,
    )
