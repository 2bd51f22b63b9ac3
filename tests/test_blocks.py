"""The activation pool: free queue pointers, budget, eviction orders (incl. property tests)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from motioncache_vllm.blocks.codec import SlotCodec
from motioncache_vllm.blocks.eviction import AdmitWholeOrder, LRUOrder, MotionAwareOrder
from motioncache_vllm.blocks.free_queue import NULL, FreeSlotQueue
from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.blocks.pool import ActivationPool


def test_free_queue_links_pointer_by_pointer():
    q = FreeSlotQueue(4)
    assert q.to_list() == [0, 1, 2, 3] and q.head == 0 and q.tail == 3
    q.remove(2)
    assert q._next[1] == 3 and q._prev[3] == 1 and 2 not in q
    assert q.pop() == 0 and q.head == 1 and q._prev[1] == NULL
    q.push(2)
    assert q.to_list() == [1, 3, 2] and q.tail == 2 and q._next[3] == 2
    q.remove(2)
    assert q.tail == 3 and q._next[3] == NULL and len(q) == 2


def test_layout_blocks_and_tokens():
    lay = ChunkLayout(frames=2, height=4, width=4, tile=2)
    assert lay.num_blocks == 4 and lay.block_sizes.tolist() == [8, 8, 8, 8]
    tokens = lay.tokens_of(torch.tensor([False, True, False, False]))
    assert tokens.tolist() == [2, 3, 6, 7, 18, 19, 22, 23]
    flags = torch.zeros(lay.num_tokens, dtype=torch.bool)
    flags[tokens[:4]] = True  # block 1 in frame 0 only
    assert lay.block_fraction(flags).tolist() == [0.0, 0.5, 0.0, 0.0]


def _values(n, tokens=2, dim=3, fill=1.0):
    return torch.full((n, tokens, dim), fill)


def test_motion_order_evicts_soonest_recomputed_first():
    pool = ActivationPool(2, 3, budget_bytes=3 * 2 * 3 * 4, eviction=MotionAwareOrder())
    pool.write("a", 4, torch.tensor([0, 1, 2]), _values(3), torch.tensor([5.0, 0.5, 9.0]))
    pool.write("b", 4, torch.tensor([0]), _values(1), torch.tensor([7.0]))
    assert pool.present("a", 4).tolist() == [True, False, True, False]  # block 1 (0.5 steps left) went
    pool.reprioritise("a", torch.tensor([0.1, 0.0, 9.0, 0.0]))
    pool.write("b", 4, torch.tensor([1]), _values(1), torch.tensor([7.0]))
    assert pool.present("a", 4).tolist() == [False, False, True, False]
    assert pool.stats.evictions == 2


def test_lru_order_evicts_least_recently_used():
    pool = ActivationPool(2, 3, budget_bytes=2 * 2 * 3 * 4, eviction=LRUOrder())
    pool.write("a", 3, torch.tensor([0, 1]), _values(2), torch.zeros(2))
    pool.read("a", torch.tensor([0]))  # 0 is now more recent than 1
    pool.write("a", 3, torch.tensor([2]), _values(1), torch.zeros(1))
    assert pool.present("a", 3).tolist() == [True, False, True]


def test_write_never_evicts_its_own_blocks_and_drops_what_does_not_fit():
    pool = ActivationPool(2, 3, budget_bytes=2 * 2 * 3 * 4)
    stored = pool.write("a", 4, torch.arange(4), _values(4), torch.zeros(4))
    assert stored.tolist() == [True, True, False, False]
    assert pool.stats.dropped_writes == 2 and pool.stats.in_use_slots == 2


def test_read_returns_values_and_misses():
    pool = ActivationPool(2, 3, budget_bytes=None)
    pool.write("a", 3, torch.tensor([1]), _values(1, fill=4.0), torch.zeros(1))
    vals, hit = pool.read("a", torch.tensor([0, 1]))
    assert hit.tolist() == [False, True] and vals[1].eq(4.0).all() and vals[0].eq(0).all()


def test_zero_budget_stores_nothing():
    pool = ActivationPool(2, 3, budget_bytes=0)
    assert pool.write("a", 2, torch.arange(2), _values(2), torch.zeros(2)).tolist() == [False, False]
    assert pool.allocated_bytes == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "release", "read", "reprio"]),
        st.integers(0, 3),  # owner
        st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
        st.floats(0, 10),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=ops,
    budget_slots=st.integers(0, 12),
    eviction=st.sampled_from(["motion", "lru", "admit"]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.int8, "int4"]),
    pair=st.sampled_from([None, "int4"]),
)
def test_budget_never_exceeded_and_tables_consistent(ops, budget_slots, eviction, dtype, pair):
    order = {"motion": MotionAwareOrder, "lru": LRUOrder, "admit": AdmitWholeOrder}[eviction]()
    tokens, dim = 2, 3
    budget = budget_slots * tokens * dim * 4
    pool = ActivationPool(tokens, dim, budget_bytes=budget, eviction=order, dtype=dtype, pair_dtype=pair)
    tokens = tokens * (2 if pair else 1)  # rows per slot
    truth: dict[tuple, float] = {}
    for op, owner, blocks, prio in ops:
        idx = torch.tensor(blocks)
        if op == "write":
            vals = torch.stack([torch.full((tokens, dim), float(owner * 10 + b)) for b in blocks])
            stored = pool.write(owner, 8, idx, vals, torch.full((len(blocks),), prio))
            for b, ok in zip(blocks, stored.tolist()):
                if ok:
                    truth[(owner, b)] = float(owner * 10 + b)
        elif op == "release":
            pool.release(owner)
        elif op == "reprio":
            pool.reprioritise(owner, torch.full((8,), prio))
        else:
            vals, hit = pool.read(owner, idx)
            for b, v, h in zip(blocks, vals, hit.tolist()):
                if h:  # whatever is present holds what was written for it (constant rows: exact
                    # in every format up to the rounding of the scale)
                    assert torch.allclose(v.float(), torch.full((tokens, dim), truth[(owner, b)]), rtol=1e-6, atol=0)
        assert pool.stats.in_use_bytes <= budget and pool.allocated_bytes <= budget
        slots = torch.cat([t[t >= 0] for t in pool.tables.values()]) if pool.tables else torch.tensor([])
        assert len(slots) == len(set(slots.tolist())) == pool.stats.in_use_slots
        assert pool.stats.in_use_slots + len(pool.free) == pool.stats.capacity_slots


def test_int8_pool_holds_four_times_the_blocks_within_a_percent():
    tokens, dim, budget = 3, 256, 64 * 3 * 256 * 4  # 64 float32 slots
    exact = ActivationPool(tokens, dim, budget_bytes=budget)
    packed = ActivationPool(tokens, dim, budget_bytes=budget, dtype=torch.int8)
    assert exact.stats.capacity_slots == 64 and packed.stats.capacity_slots >= 250
    assert packed.allocated_bytes <= budget
    torch.manual_seed(0)
    values = torch.randn(8, tokens, dim) * torch.rand(8, tokens, 1) * 5  # rows of different scales
    blocks = torch.arange(8)
    packed.write("r", 8, blocks, values, torch.zeros(8))
    got, hit = packed.read("r", blocks)
    assert hit.all() and got.dtype == torch.float32
    error = (got - values).norm() / values.norm()
    assert 0 < error < 0.01  # absmax int8 per token row: about 0.5% relative error


@pytest.mark.parametrize(
    "sections, max_error",
    [
        ([(3, "float32")], 0.0),
        ([(3, "float16")], 1e-3),
        ([(3, "int8")], 0.01),
        ([(3, "int4")], 0.2),
        ([(3, "int8"), (3, "int4")], 0.2),
    ],
)
def test_slot_codec_round_trip(sections, max_error):
    codec = SlotCodec(sections, 256)
    torch.manual_seed(0)
    values = torch.randn(8, codec.rows, 256) * torch.rand(8, codec.rows, 1) * 5
    data = codec.encode(values)
    assert data.dtype == torch.uint8 and data.shape == (8, codec.slot_bytes)
    back = codec.decode(data)
    error = float((back - values).norm() / values.norm())
    assert error <= max_error and (error == 0.0) == (max_error == 0.0)
    if len(sections) == 2:  # one half decodes alone to the same values
        assert torch.equal(codec.decode(data, 1), back[:, sections[0][0] :])


def test_rotation_keeps_an_outlier_channel_from_setting_every_scale():
    """Residual streams have a few huge channels; rotated rows spread them before int8."""
    torch.manual_seed(0)
    values = torch.randn(8, 3, 256)
    values[..., 7] *= 40.0  # one outlier channel
    rotated = SlotCodec([(3, "int8")], 256)
    plain = SlotCodec([(3, "int8")], 255)  # 255 is not a power of two: no rotation
    err = lambda c, v: float((c.decode(c.encode(v)) - v).norm() / v.norm())  # noqa: E731
    assert err(rotated, values) < err(plain, values[..., :255]) / 2


def test_paired_int4_pool_holds_both_cfg_branches_in_a_fifth_of_the_bytes():
    exact = ActivationPool(3, 256)
    paired = ActivationPool(3, 256, dtype="int8", pair_dtype="int4")
    assert paired.codec.rows == 6 and paired.slot_bytes / (2 * exact.slot_bytes) < 0.2


def test_admission_control_caches_a_chunk_whole_or_not_at_all():
    """``admit``: no owner's blocks are evicted for another's; a write needing more new slots
    than are free is refused whole, and succeeds once a finished chunk releases its slots."""
    pool = ActivationPool(2, 3, budget_bytes=8 * 2 * 3 * 4, eviction=AdmitWholeOrder())  # 8 slots
    four = torch.arange(4)
    assert pool.write("a", 4, four, _values(4), torch.zeros(4)).all()
    assert pool.write("b", 4, four, _values(4), torch.zeros(4)).all()
    assert not pool.write("c", 4, four, _values(4), torch.zeros(4)).any()  # refused, nothing evicted
    assert pool.present("a", 4).all() and pool.present("b", 4).all() and not pool.present("c", 4).any()
    assert pool.stats.evictions == 0 and pool.stats.dropped_writes == 4
    assert pool.write("a", 4, torch.tensor([1, 3]), _values(2, fill=2.0), torch.zeros(2)).all()  # rewrites fit
    pool.release("a")
    assert pool.write("c", 4, four, _values(4), torch.zeros(4)).all()
