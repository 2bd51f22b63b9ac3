"""A free list of pool slots with O(1) pop, push and removal from the middle.

Same idea as vLLM's ``FreeKVCacheBlockQueue``: a doubly linked list threaded through
two preallocated integer arrays (no allocation per operation). Slot ``-1`` is the null
pointer.
"""

from __future__ import annotations

NULL = -1


class FreeSlotQueue:
    def __init__(self, capacity: int = 0) -> None:
        self._prev: list[int] = []
        self._next: list[int] = []
        self._linked: list[bool] = []
        self.head = self.tail = NULL
        self.size = 0
        self.grow(capacity)

    @property
    def capacity(self) -> int:
        return len(self._prev)

    def grow(self, capacity: int) -> None:
        """Add slots ``[old_capacity, capacity)`` to the tail, all free."""
        for slot in range(self.capacity, capacity):
            self._prev.append(NULL)
            self._next.append(NULL)
            self._linked.append(False)
            self.push(slot)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, slot: int) -> bool:
        return 0 <= slot < self.capacity and self._linked[slot]

    def push(self, slot: int) -> None:
        if self._linked[slot]:
            raise ValueError(f"slot {slot} is already free")
        self._prev[slot], self._next[slot] = self.tail, NULL
        if self.tail != NULL:
            self._next[self.tail] = slot
        else:
            self.head = slot
        self.tail = slot
        self._linked[slot] = True
        self.size += 1

    def remove(self, slot: int) -> None:
        if not self._linked[slot]:
            raise ValueError(f"slot {slot} is not free")
        prev, nxt = self._prev[slot], self._next[slot]
        if prev != NULL:
            self._next[prev] = nxt
        else:
            self.head = nxt
        if nxt != NULL:
            self._prev[nxt] = prev
        else:
            self.tail = prev
        self._prev[slot] = self._next[slot] = NULL
        self._linked[slot] = False
        self.size -= 1

    def pop(self) -> int:
        if self.head == NULL:
            raise IndexError("no free slot")
        slot = self.head
        self.remove(slot)
        return slot

    def to_list(self) -> list[int]:
        out, slot = [], self.head
        while slot != NULL:
            out.append(slot)
            slot = self._next[slot]
        return out
