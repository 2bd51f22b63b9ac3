"""The activation pool: cached residuals stored per spatial block in preallocated slots.

::

    storage  [slot 0][slot 1][slot 2] ...      each slot: (tokens_per_block, dim) floats
    table    owner (request, chunk, branch) -> slot per spatial block, -1 = not cached

The pool holds no per-request logic: it allocates, frees, looks up and evicts. With a
byte budget the storage is allocated once (``budget // slot_bytes`` slots) and never
exceeded; when no slot is free a victim is chosen by the :class:`EvictionOrder`. A
block that cannot be stored is simply absent: the runtime recomputes it (a miss costs
time, never correctness). Without a budget the storage grows by doubling.

Storage format (see :mod:`.codec`): float32 (exact), float16/bfloat16 (half the bytes),
int8 or int4 with one float32 scale per Hadamard-rotated token row (about a quarter and an
eighth of the bytes), as vLLM stores K/V in fp8: under a tight budget, more blocks held
coarser beat fewer held exactly (the benchmark's memory suite measures both). A *paired*
pool (``pair_dtype``) holds the two CFG branches of a block in one slot: the conditional
residual, then the unconditional one's difference from it (see ``CacheConfig.cfg_delta_dtype``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import torch

from motioncache_vllm.blocks.codec import SlotCodec
from motioncache_vllm.blocks.eviction import EvictionOrder, MotionAwareOrder
from motioncache_vllm.blocks.free_queue import FreeSlotQueue

Owner = Hashable


@dataclass
class PoolStats:
    capacity_slots: int = 0
    slot_bytes: int = 0
    budget_bytes: int | None = None
    in_use_slots: int = 0
    peak_slots: int = 0
    evictions: int = 0
    dropped_writes: int = 0  # blocks that could not be stored at all

    @property
    def in_use_bytes(self) -> int:
        return self.in_use_slots * self.slot_bytes

    @property
    def peak_bytes(self) -> int:
        return self.peak_slots * self.slot_bytes


class ActivationPool:
    def __init__(
        self,
        tokens_per_block: int,
        dim: int,
        budget_bytes: int | None = None,
        eviction: EvictionOrder | None = None,
        dtype: torch.dtype | str = "float32",
        device: torch.device | str = "cpu",
        pair_dtype: str | None = None,
    ) -> None:
        """``tokens_per_block`` rows of ``dim`` values per block; ``dtype`` their storage format;
        ``pair_dtype``: slots hold a second section of as many rows in this format."""
        self.tokens_per_block, self.dim, self.device = tokens_per_block, dim, torch.device(device)
        self.dtype = str(dtype).removeprefix("torch.")
        sections = [(tokens_per_block, self.dtype)]
        if pair_dtype is not None:
            sections.append((tokens_per_block, pair_dtype))
        self.codec = SlotCodec(sections, dim)
        self.paired = pair_dtype is not None
        self.slot_bytes = self.codec.slot_bytes
        self.budget_bytes = budget_bytes
        # unbounded: nothing is ever evicted, so reads and new priorities need not reorder
        # anything (measured ~3% of a cached run's wall time spent on that bookkeeping)
        self.evicts = budget_bytes is not None
        capacity = 0 if budget_bytes is None else max(budget_bytes, 0) // self.slot_bytes
        self.storage = torch.empty((capacity, self.slot_bytes), dtype=torch.uint8, device=self.device)
        self.free = FreeSlotQueue(capacity)
        self.eviction = eviction if eviction is not None else MotionAwareOrder()
        self._slot_owner: list[tuple[Owner, int] | None] = [None] * capacity
        self.tables: dict[Owner, torch.Tensor] = {}
        self.stats = PoolStats(capacity_slots=capacity, slot_bytes=self.slot_bytes, budget_bytes=budget_bytes)

    # -- tables --------------------------------------------------------------------------
    def table(self, owner: Owner, num_blocks: int) -> torch.Tensor:
        table = self.tables.get(owner)
        if table is None:
            table = self.tables[owner] = torch.full((num_blocks,), -1, dtype=torch.long)
        return table

    def present(self, owner: Owner, num_blocks: int) -> torch.Tensor:
        return self.table(owner, num_blocks) >= 0

    def release(self, owner: Owner) -> None:
        """Free every slot of ``owner`` (its chunk finished or its request ended)."""
        table = self.tables.pop(owner, None)
        if table is None:
            return
        for slot in table[table >= 0].tolist():
            self._free_slot(slot)
        if self.budget_bytes is None and self.stats.in_use_slots == 0:
            self._shrink()

    def _shrink(self) -> None:
        """An unbounded pool gives its storage back once nothing is cached (it grows again by
        doubling on the next writes); a bounded pool keeps its fixed, preallocated storage."""
        self.storage = torch.empty((0, self.slot_bytes), dtype=torch.uint8, device=self.device)
        self.free = FreeSlotQueue(0)
        self._slot_owner = []
        self.stats.capacity_slots = 0

    # -- data ----------------------------------------------------------------------------
    def read(self, owner: Owner, blocks: torch.Tensor, section: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 values of ``blocks`` (long ids) and which of them are present; absent rows
        are zero. ``section``: of a paired pool, only that half of each slot (0 or 1)."""
        table = self.tables.get(owner)
        slots = table[blocks] if table is not None else torch.full_like(blocks, -1)
        hit = slots >= 0
        rows = self.codec.rows if section is None else self.codec.sections[section].rows
        out = torch.zeros((len(blocks), rows, self.dim), dtype=torch.float32, device=self.device)
        if hit.any():
            held = slots[hit]
            out[hit] = self.codec.decode(self.storage[held], section)
            if self.evicts:
                for slot in held.tolist():
                    self.eviction.touch(slot)
        return out, hit

    def write(
        self, owner: Owner, num_blocks: int, blocks: torch.Tensor, values: torch.Tensor, priorities: torch.Tensor
    ) -> torch.Tensor:
        """Store ``values[i]`` ((rows, dim), every section's rows) for block ``blocks[i]``;
        returns which were stored.

        Slots of the blocks being written are pinned, so a write never evicts its own
        data. A block that finds no slot is left absent (and counted in ``dropped_writes``).
        """
        table = self.table(owner, num_blocks)
        stored = torch.zeros(len(blocks), dtype=torch.bool)
        if self.eviction.admits_whole and self.budget_bytes is not None:
            new = int((table[blocks] < 0).sum())
            if new > len(self.free):  # admission control: all of it or none of it
                self.stats.dropped_writes += new
                return stored
        pinned = {int(s) for s in table[blocks].tolist() if s >= 0}
        written: list[int] = []
        for i, (block, priority) in enumerate(zip(blocks.tolist(), priorities.tolist())):
            slot = int(table[block])
            if slot < 0:
                slot = self._allocate(pinned)
                if slot < 0:
                    self.stats.dropped_writes += 1
                    continue
                table[block] = slot
                self._slot_owner[slot] = (owner, block)
                self.eviction.insert(slot, priority)
                pinned.add(slot)
            else:
                self.eviction.touch(slot, priority)
            written.append(slot)
            stored[i] = True
        if written:
            self.storage[torch.tensor(written)] = self.codec.encode(values[stored])
        return stored

    def reprioritise(self, owner: Owner, priorities: torch.Tensor) -> None:
        """New eviction priorities for all present blocks of ``owner`` (by block id)."""
        table = self.tables.get(owner)
        if table is None or not self.evicts:
            return
        for block in torch.nonzero(table >= 0).flatten().tolist():
            self.eviction.touch(int(table[block]), float(priorities[block]))

    # -- slots ---------------------------------------------------------------------------
    def _allocate(self, pinned: set[int]) -> int:
        if len(self.free) == 0:
            if self.budget_bytes is None:
                self._grow()
            else:
                victim = self.eviction.victim(pinned)
                if victim is None:
                    return -1
                owner, block = self._slot_owner[victim]
                self.tables[owner][block] = -1
                self._slot_owner[victim] = None
                self.free.push(victim)
                self.stats.in_use_slots -= 1
                self.stats.evictions += 1
        slot = self.free.pop()
        self.stats.in_use_slots += 1
        self.stats.peak_slots = max(self.stats.peak_slots, self.stats.in_use_slots)
        return slot

    def _free_slot(self, slot: int) -> None:
        self.eviction.remove(slot)
        self._slot_owner[slot] = None
        self.free.push(slot)
        self.stats.in_use_slots -= 1

    def _grow(self) -> None:
        old = self.storage.shape[0]
        new = max(64, 2 * old)
        grown = torch.empty((new, self.slot_bytes), dtype=torch.uint8, device=self.device)
        grown[:old] = self.storage
        self.storage = grown
        self._slot_owner.extend([None] * (new - old))
        self.free.grow(new)
        self.stats.capacity_slots = new

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the preallocated storage (never above the budget when one is set)."""
        return self.storage.numel()
