"""Eviction of stored video sessions by score (motion of the last chunk, hits, age), fast."""

from __future__ import annotations

import msgspec
import pytest

from motioncache_vllm.blocks.eviction import SessionScoreOrder
from motioncache_vllm.blocks.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_score_order_evicts_the_state_least_worth_keeping():
    clock = Clock()
    store = SessionStore(300, eviction=SessionScoreOrder(half_life_s=100.0, clock=clock))
    store.put("static", "s", 100, priority=0.0)  # cheap to make again
    store.put("moving", "m", 100, priority=0.8)  # costly to make again
    store.put("calm", "c", 100, priority=0.2)
    clock.now = 10.0
    store.put("new", "n", 100, priority=0.2)  # full: the static one goes first, not the oldest-used
    assert "static" not in store and {"moving", "calm", "new"} <= set(store._entries)
    # hits keep a state: "calm" used twice outlives the equally calm but unused "new"
    assert store.get("calm") == "c" and store.get("calm") == "c"
    store.put("another", "a", 100, priority=0.3)
    assert "new" not in store and "calm" in store
    # age: long unused, even the high-motion state scores below a fresh low-motion one
    clock.now = 10_000.0
    store.get("another"), store.get("calm")
    store.put("late", "l", 100, priority=0.1)
    assert "moving" not in store and {"calm", "another", "late"} == set(store._entries)
    assert store.stats.evictions == 3


def test_score_order_scores_and_lru_differs():
    clock = Clock()
    order = SessionScoreOrder(half_life_s=60.0, motion_floor=0.05, clock=clock)
    order.insert(0, 0.5)
    order.insert(1, 0.0)
    assert order.score(0) == pytest.approx(0.55) and order.score(1) == pytest.approx(0.05)
    order.touch(1)
    clock.now = 60.0
    assert order.score(1) == pytest.approx(2 * 0.05 / 2) and order.score(0) == pytest.approx(0.55 / 2)
    assert order.victim({1}) == 0 and order.victim(set()) == 1 and order.victim(set()) is None
    # the same puts under LRU evict the oldest: the moving video
    lru = SessionStore(200)
    lru.put("moving", 1, 100, priority=0.9)
    lru.put("static", 2, 100, priority=0.0)
    lru.put("new", 3, 100)
    assert "moving" not in lru and "static" in lru


def test_fleet_router_keeps_videos_by_score():
    """The router's own store (no cluster needed: nothing here touches Ray)."""
    from motioncache_vllm.fleet.messages import WorkerSpec
    from motioncache_vllm.fleet.router import Fleet, FleetConfig

    spec = WorkerSpec(worker_id=0, model_dir="/m", engine_argv=[])
    mib = 2**20
    fleet = Fleet(spec, FleetConfig(session_budget_mib=2))
    assert fleet.sessions.order.name == "score"
    fleet._remember("video-moving", "ref-a", mib, motion=0.6)
    fleet._remember("video-static", "ref-b", mib, motion=0.01)
    fleet._remember("video-new", "ref-c", mib, motion=0.3)
    assert "video-static" not in fleet.sessions and fleet.sessions.get("video-moving") == "ref-a"
    lru = Fleet(spec, FleetConfig(session_budget_mib=2, session_eviction="lru"))
    for name, motion in (("video-moving", 0.6), ("video-static", 0.01), ("video-new", 0.3)):
        lru._remember(name, name, mib, motion=motion)
    assert "video-moving" not in lru.sessions
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"session_eviction": "random"}, FleetConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"session_half_life_s": 0}, FleetConfig)
