"""Memory that one request must not leave behind: the pool's storage and the RoPE-row cache."""

from __future__ import annotations

import torch

from motioncache_vllm.blocks.pool import ActivationPool


def test_unbounded_pool_gives_its_storage_back_when_idle():
    pool = ActivationPool(tokens_per_block=4, dim=8)
    values = torch.randn(100, 4, 8)
    for owner in ("a", "b"):
        assert bool(pool.write(owner, 100, torch.arange(100), values, torch.zeros(100)).all())
    assert pool.allocated_bytes >= 200 * pool.slot_bytes
    pool.release("a")
    assert pool.allocated_bytes >= 200 * pool.slot_bytes  # "b" still cached: nothing moves
    read, hit = pool.read("b", torch.arange(100))
    assert bool(hit.all()) and torch.equal(read, values)
    pool.release("b")
    assert pool.allocated_bytes == 0 and pool.stats.capacity_slots == 0
    # and it works again afterwards
    assert bool(pool.write("c", 10, torch.arange(10), values[:10], torch.zeros(10)).all())
    assert torch.equal(pool.read("c", torch.arange(10))[0], values[:10])


def test_bounded_pool_keeps_its_fixed_storage():
    pool = ActivationPool(tokens_per_block=4, dim=8, budget_bytes=64 * 4 * 8 * 4)
    size = pool.allocated_bytes
    pool.write("a", 10, torch.arange(10), torch.randn(10, 4, 8), torch.zeros(10))
    pool.release("a")
    assert pool.allocated_bytes == size > 0


def test_rope_cache_is_bounded(embedded_pipe, monkeypatch):
    from motioncache_vllm.models import wan_adapter
    from motioncache_vllm.models.wan_adapter import WanFamilyAdapter

    adapter = WanFamilyAdapter(embedded_pipe.transformer)
    one = adapter.rope_rows(0, 3, (8, 8))
    entry = sum(t.numel() * t.element_size() for t in one)
    monkeypatch.setattr(wan_adapter, "ROPE_CACHE_BYTES", 3 * entry)
    for start in range(0, 30, 3):  # later chunks: same size per entry
        adapter.rope_rows(start, 3, (8, 8))
    assert adapter._rope_bytes <= 3 * entry and len(adapter._rope_cache) == 3
    assert adapter.rope_rows(27, 3, (8, 8)) is adapter._rope_cache[(27, 3, 8, 8)]  # the newest stay
    again = adapter.rope_rows(0, 3, (8, 8))  # recomputed after eviction: the same rows
    assert torch.equal(again[0], one[0]) and torch.equal(again[1], one[1])
