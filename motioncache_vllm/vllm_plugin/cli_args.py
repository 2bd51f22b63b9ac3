"""The ``--cache-policy`` engine flag, added by wrapping ``EngineArgs.add_cli_args``.

``EngineArgs.from_cli_args`` keeps only the dataclass fields of ``EngineArgs``, so an
out-of-tree setting must travel in ``additional_config`` (vLLM's place for them; it
reaches every worker as ``VllmConfig.additional_config``). The flag therefore writes
``{"cache_policy": NAME}`` into ``namespace.additional_config``. Since argparse stores the
last ``--additional-config`` over whatever came before, that flag's action is swapped for
a merging one too: ``--cache-policy motion --additional-config '{"cache_pool_mib": 64}'``
and the reverse order both give ``{"cache_policy": "motion", "cache_pool_mib": 64}``
(for one key given twice, the later one wins, as for any argparse flag).
"""

from __future__ import annotations

import argparse
from typing import Any

CACHE_POLICY_KEY = "cache_policy"
_MARK = "_motioncache_wrapped"


def _merged(namespace: argparse.Namespace, update: dict[str, Any]) -> dict[str, Any]:
    current = getattr(namespace, "additional_config", None)
    # a fresh dict each time: argparse's default ({}) object is shared by every parse
    return {**(current if isinstance(current, dict) else {}), **update}


class CachePolicyAction(argparse.Action):
    """``--cache-policy NAME`` -> ``additional_config["cache_policy"] = NAME``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.additional_config = _merged(namespace, {CACHE_POLICY_KEY: values})


class MergingDictAction(argparse._StoreAction):
    """``--additional-config``, merged into what earlier flags put there instead of replacing it."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if isinstance(values, dict):
            values = _merged(namespace, values)
        setattr(namespace, self.dest, values)


def add_cache_policy_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--cache-policy`` to a parser that already has vLLM's engine arguments."""
    from motioncache_vllm.policies import policy_names

    for action in parser._actions:
        if action.dest == "additional_config" and type(action) is argparse._StoreAction:
            action.__class__ = MergingDictAction  # same fields, merging __call__
    if not any("--cache-policy" in a.option_strings for a in parser._actions):
        parser.add_argument(
            "--cache-policy",
            action=CachePolicyAction,
            dest="motioncache_cache_policy",  # never read: the value lives in additional_config
            choices=policy_names(),
            default=argparse.SUPPRESS,
            help="MotionCache activation-cache policy of the video model (stored as "
            "additional_config['cache_policy']; requests may override it).",
        )
    return parser


def install_cache_policy_flag() -> None:
    """Wrap ``EngineArgs.add_cli_args`` once per process (the plugin may be loaded repeatedly)."""
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.add_cli_args
    if getattr(original, _MARK, False):
        return

    def add_cli_args(parser, *args, **kwargs):
        return add_cache_policy_argument(original(parser, *args, **kwargs))

    setattr(add_cli_args, _MARK, True)
    add_cli_args.__doc__ = original.__doc__
    EngineArgs.add_cli_args = staticmethod(add_cli_args)
