"""Cache policies behind one interface (:class:`~.base.CachePolicy`), registered by name.

    >>> make_policy("motion", {"threshold": 0.2}).config.threshold
    0.2
"""

from __future__ import annotations

from typing import Any

import msgspec

from motioncache_vllm.policies.base import CachePolicy, Decision, PolicyState, StepObservation
from motioncache_vllm.policies.flowcache import FlowCacheConfig, FlowCachePolicy
from motioncache_vllm.policies.magcache import MagCacheConfig, MagCachePolicy
from motioncache_vllm.policies.motion import MotionConfig, MotionPolicy
from motioncache_vllm.policies.none import NoneConfig, NonePolicy
from motioncache_vllm.policies.teacache import TeaCacheConfig, TeaCachePolicy
from motioncache_vllm.policies.tokenrate import TokenRateConfig, TokenRatePolicy

__all__ = [
    "CachePolicy", "Decision", "PolicyState", "StepObservation", "UnknownPolicyError", "InvalidPolicyConfig",
    "register_policy", "policy_names", "policy_for_config", "get_policy_class", "make_policy", "parse_overrides",
    "NoneConfig", "TeaCacheConfig", "FlowCacheConfig", "MotionConfig", "MagCacheConfig", "TokenRateConfig",
]


class UnknownPolicyError(ValueError):
    """A policy name that is not registered."""


class InvalidPolicyConfig(ValueError):
    """Policy overrides that do not fit the policy's config."""


_REGISTRY: dict[str, type[CachePolicy]] = {}


def register_policy(cls: type[CachePolicy]) -> type[CachePolicy]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} is already registered by {_REGISTRY[cls.name].__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (NonePolicy, TeaCachePolicy, FlowCachePolicy, MotionPolicy, MagCachePolicy, TokenRatePolicy):
    register_policy(_cls)


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_policy_class(name: str) -> type[CachePolicy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(f"unknown cache policy {name!r}; valid policies: {', '.join(policy_names())}") from None


# kept for callers that only need to validate a name
get_policy_spec = get_policy_class


def make_policy(
    name: str,
    overrides: dict[str, Any] | None = None,
    model_coefficients: tuple[float, ...] | None = None,
    model_fit_range: tuple[float, float] | None = None,
    model_mag_ratios: dict[int, tuple[float, ...]] | None = None,
) -> CachePolicy:
    """Build a policy from its name and config overrides (validated, unknown keys rejected)."""
    cls = get_policy_class(name)
    try:
        config = msgspec.convert(overrides or {}, cls.config_cls)
    except msgspec.ValidationError as exc:
        fields = ", ".join(f.name for f in msgspec.structs.fields(cls.config_cls)) or "(none)"
        raise InvalidPolicyConfig(f"policy {name!r}: {exc}; its fields: {fields}") from None
    return cls(config, model_coefficients=model_coefficients, model_fit_range=model_fit_range,
               model_mag_ratios=model_mag_ratios)


def policy_for_config(config: msgspec.Struct) -> str:
    """The registered policy name whose config class is exactly ``type(config)``."""
    for name, cls in _REGISTRY.items():
        if type(config) is cls.config_cls:
            return name
    raise InvalidPolicyConfig(f"{type(config).__name__} is not the config of a registered policy")


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
