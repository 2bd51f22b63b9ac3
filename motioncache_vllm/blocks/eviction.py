"""Eviction orders for the activation pool: which cached block goes when memory is full.

The pool asks an order for a victim; the order never sees tensors, only slot numbers
and priorities. Two orders:

- ``motion`` (default): evict the block the policy expects to recompute soonest anyway
  (high motion, accumulated need close to the threshold): its cached residual has the
  least reuse left. Priorities are "expected steps until recompute" from
  :meth:`CachePolicy.steps_until_recompute`; a min-heap with lazy invalidation.
- ``lru``: least recently used first, for comparison.
- ``score`` (stored video sessions, :class:`SessionScoreOrder`): evict the session whose
  keeping is worth least: ``(1 + hits) * (floor + motion of its last chunk)``, decayed by
  its age since last use.
- ``admit``: no eviction; admission control instead. A write that needs more new slots
  than are free is refused whole, so a request's chunk is cached completely or not at all
  and never evicts another's blocks. Since a missing block makes the whole step full, a
  shared pool too small for every live request otherwise thrashes (measured: 4 interleaved
  requests computed 97-100% of their token-steps with motion-aware or LRU eviction).
"""

from __future__ import annotations

import heapq
import itertools
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable


class EvictionOrder(ABC):
    name: str
    admits_whole: bool = False  # the pool refuses a write it cannot hold whole (see AdmitWholeOrder)

    @abstractmethod
    def insert(self, slot: int, priority: float) -> None: ...

    @abstractmethod
    def touch(self, slot: int, priority: float | None = None) -> None:
        """The slot was used; ``priority`` (if given) replaces its priority."""

    @abstractmethod
    def remove(self, slot: int) -> None: ...

    @abstractmethod
    def victim(self, pinned: set[int]) -> int | None:
        """Pop and return the slot to evict (never one in ``pinned``), or None."""


class LRUOrder(EvictionOrder):
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def insert(self, slot: int, priority: float) -> None:
        self._order[slot] = None
        self._order.move_to_end(slot)

    def touch(self, slot: int, priority: float | None = None) -> None:
        if slot in self._order:
            self._order.move_to_end(slot)

    def remove(self, slot: int) -> None:
        self._order.pop(slot, None)

    def victim(self, pinned: set[int]) -> int | None:
        for slot in self._order:
            if slot not in pinned:
                del self._order[slot]
                return slot
        return None


class MotionAwareOrder(EvictionOrder):
    """Lowest expected reuse first; ties broken by age (older first)."""

    name = "motion"

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._current: dict[int, int] = {}  # slot -> live entry id
        self._ids = itertools.count()

    def insert(self, slot: int, priority: float) -> None:
        entry = next(self._ids)
        self._current[slot] = entry
        heapq.heappush(self._heap, (priority, entry, slot))

    def touch(self, slot: int, priority: float | None = None) -> None:
        if priority is not None and slot in self._current:
            self.insert(slot, priority)

    def remove(self, slot: int) -> None:
        self._current.pop(slot, None)

    def victim(self, pinned: set[int]) -> int | None:
        held = []
        found = None
        while self._heap:
            priority, entry, slot = heapq.heappop(self._heap)
            if self._current.get(slot) != entry:
                continue  # stale entry
            if slot in pinned:
                held.append((priority, entry, slot))
                continue
            del self._current[slot]
            found = slot
            break
        for item in held:
            heapq.heappush(self._heap, item)
        if len(self._heap) > 4 * max(len(self._current), 16):  # compact stale entries
            self._heap = [e for e in self._heap if self._current.get(e[2]) == e[1]]
            heapq.heapify(self._heap)
        return found


class AdmitWholeOrder(EvictionOrder):
    """Never evicts; tells the pool to admit an owner's new blocks all together or not at all."""

    name = "admit"
    admits_whole = True

    def insert(self, slot: int, priority: float) -> None:
        pass

    def touch(self, slot: int, priority: float | None = None) -> None:
        pass

    def remove(self, slot: int) -> None:
        pass

    def victim(self, pinned: set[int]) -> int | None:
        return None


class SessionScoreOrder(EvictionOrder):
    """Stored video sessions (``blocks.sessions``): lowest keeping score first.

    A stored session saves regenerating its video when it is extended. What that saving is
    worth grows with how likely it is to be used again (``hits``, recency) and with what a
    regeneration costs: under MotionCache a low-motion video is cheap to make again (most of
    its tokens are reused from the cache), a high-motion one recomputes most of them. So::

        score = (1 + hits) * (motion_floor + motion) / (1 + age_s / half_life_s)

    ``motion``: the insert priority (the motion of the video's last chunk, >= 0); ``age_s``:
    seconds since it was stored or last used; ``hits``: uses since it was stored. Scores
    change with time, so the victim is found by a scan (a store holds few sessions)."""

    name = "score"

    def __init__(
        self, half_life_s: float = 600.0, motion_floor: float = 0.05, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.half_life_s, self.motion_floor, self.clock = half_life_s, motion_floor, clock
        self._entries: dict[int, list] = {}  # slot -> [motion, hits, last used]

    def score(self, slot: int, now: float | None = None) -> float:
        motion, hits, used = self._entries[slot]
        age = max((self.clock() if now is None else now) - used, 0.0)
        return (1 + hits) * (self.motion_floor + motion) / (1 + age / self.half_life_s)

    def insert(self, slot: int, priority: float) -> None:
        self._entries[slot] = [max(float(priority), 0.0), 0, self.clock()]

    def touch(self, slot: int, priority: float | None = None) -> None:
        entry = self._entries.get(slot)
        if entry is not None:
            entry[1] += 1
            entry[2] = self.clock()
            if priority is not None:
                entry[0] = max(float(priority), 0.0)

    def remove(self, slot: int) -> None:
        self._entries.pop(slot, None)

    def victim(self, pinned: set[int]) -> int | None:
        now = self.clock()
        # ties: the oldest slot first (slots are given out in insertion order)
        candidates = [(self.score(s, now), s) for s in self._entries if s not in pinned]
        if not candidates:
            return None
        slot = min(candidates)[1]
        del self._entries[slot]
        return slot


EVICTION_ORDERS: dict[str, type[EvictionOrder]] = {
    "motion": MotionAwareOrder,
    "lru": LRUOrder,
    "admit": AdmitWholeOrder,
    "score": SessionScoreOrder,
}


def make_eviction_order(name: str) -> EvictionOrder:
    try:
        return EVICTION_ORDERS[name]()
    except KeyError:
        raise ValueError(f"unknown eviction order {name!r}; valid: {', '.join(sorted(EVICTION_ORDERS))}") from None
