"""Eviction orders for the activation pool: which cached block goes when memory is full.

The pool asks an order for a victim; the order never sees tensors, only slot numbers
and priorities. Two orders:

- ``motion`` (default): evict the block the policy expects to recompute soonest anyway
  (high motion, accumulated need close to the threshold): its cached residual has the
  least reuse left. Priorities are "expected steps until recompute" from
  :meth:`CachePolicy.steps_until_recompute`; a min-heap with lazy invalidation.
- ``lru``: least recently used first, for comparison.
- ``admit``: no eviction; admission control instead. A write that needs more new slots
  than are free is refused whole, so a request's chunk is cached completely or not at all
  and never evicts another's blocks. Since a missing block makes the whole step full, a
  shared pool too small for every live request otherwise thrashes (measured: 4 interleaved
  requests computed 97-100% of their token-steps with motion-aware or LRU eviction).
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict


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


EVICTION_ORDERS: dict[str, type[EvictionOrder]] = {
    "motion": MotionAwareOrder,
    "lru": LRUOrder,
    "admit": AdmitWholeOrder,
}


def make_eviction_order(name: str) -> EvictionOrder:
    try:
        return EVICTION_ORDERS[name]()
    except KeyError:
        raise ValueError(f"unknown eviction order {name!r}; valid: {', '.join(sorted(EVICTION_ORDERS))}") from None
