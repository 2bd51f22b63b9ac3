"""A byte-budgeted store of video sessions (generation snapshots) with the pool's eviction orders.

A server keeps the state of finished (or interrupted) videos so that an extension or a
resume continues them instead of regenerating them. The store holds opaque values with
their size in bytes; when a new one does not fit the budget, older ones are evicted in
the order of an :class:`~motioncache_vllm.blocks.eviction.EvictionOrder` (``lru`` by
default, the same interface the activation pool evicts through; ``score`` keeps the
sessions most worth keeping by motion, hits and age; ``admit`` refuses new entries instead
of evicting). An evicted session is not an error for its user: whoever
asks for it gets None and regenerates it from its request (its ``VideoPlan``).
Thread-safe (a server may drop sessions from another thread).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Generic, Hashable, TypeVar

from motioncache_vllm.blocks.eviction import EvictionOrder, make_eviction_order

V = TypeVar("V")


@dataclass
class SessionStats:
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    refused: int = 0  # values larger than the budget, or with nothing evictable (admit)
    hits: int = 0
    misses: int = 0


class SessionStore(Generic[V]):
    """``key -> value`` under ``budget_bytes`` (None: unbounded; 0: stores nothing)."""

    def __init__(self, budget_bytes: int | None, eviction: str | EvictionOrder = "lru") -> None:
        self.budget_bytes = budget_bytes
        self.order = make_eviction_order(eviction) if isinstance(eviction, str) else eviction
        self._entries: dict[Hashable, tuple[int, V, int]] = {}  # key -> (slot, value, nbytes)
        self._keys: dict[int, Hashable] = {}  # slot -> key
        self._slots = itertools.count()
        self._lock = threading.Lock()
        self.stats = SessionStats()

    def put(self, key: Hashable, value: V, nbytes: int, priority: float = 0.0) -> bool:
        """Store ``value`` (replacing ``key``'s); evicts others until it fits. False (and
        nothing stored) when it cannot fit at all. ``priority`` goes to the eviction order
        (``score``: the motion of the video's last chunk; ``lru`` ignores it)."""
        with self._lock:
            self._drop(key)
            if self.budget_bytes is not None:
                if nbytes > self.budget_bytes:
                    self.stats.refused += 1
                    return False
                while self.stats.bytes + nbytes > self.budget_bytes:
                    victim = self.order.victim(set())
                    if victim is None:
                        self.stats.refused += 1
                        return False
                    self._drop(self._keys[victim], evicted=True)
            slot = next(self._slots)
            self._entries[key] = (slot, value, nbytes)
            self._keys[slot] = key
            self.order.insert(slot, priority)
            self.stats.entries += 1
            self.stats.bytes += nbytes
            return True

    def get(self, key: Hashable) -> V | None:
        """The value, or None if it was never stored, dropped or evicted."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self.stats.hits += 1
            self.order.touch(entry[0])
            return entry[1]

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            self._drop(key)
            return None if entry is None else entry[1]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: Hashable, evicted: bool = False) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        slot, _, nbytes = entry
        del self._keys[slot]
        if not evicted:  # an evicted slot was already popped by victim()
            self.order.remove(slot)
        self.stats.entries -= 1
        self.stats.bytes -= nbytes
        self.stats.evictions += int(evicted)
