"""The contract every registered policy honours (run for each name in the registry)."""

import msgspec
import pytest
import torch

from motioncache_vllm.blocks.layout import ChunkLayout
from motioncache_vllm.config import PolicyConfig, decode_policy
from motioncache_vllm.policies import StepObservation, make_policy, policy_names

LAYOUT = ChunkLayout(frames=2, height=4, width=4, tile=2)
STEPS = 8


def observations(seed: int):
    g = torch.Generator().manual_seed(seed)
    previous = torch.randn(16, 8, generator=g)
    for step in range(STEPS):
        e0 = torch.full((6, 8), 1.0 + 0.05 * step) + 0.01 * torch.randn(6, 8, generator=g)
        yield StepObservation(
            e0=e0,
            hidden=torch.randn(2, 16, 8, generator=g),
            previous_last_frame=previous,
            num_steps=STEPS,
            sigmas=tuple(1.0 - i / STEPS for i in range(STEPS + 1)),
            guidance_scale=5.0,
        )


def run(policy, state, seed: int) -> list:
    decisions = []
    for obs in observations(seed):
        d = policy.decide(state, obs)
        assert d.mode in ("full", "skip", "partial")
        if d.mode == "partial":
            assert d.blocks.dtype == torch.bool and d.blocks.shape == (LAYOUT.num_blocks,) and bool(d.blocks.any())
        computed = None if d.mode == "full" else (d.blocks if d.mode == "partial" else None)
        if d.mode != "skip":
            residual = torch.randn(LAYOUT.num_tokens, 8, generator=torch.Generator().manual_seed(state.step))
            policy.observe_residual(state, residual)
            policy.on_computed(state, computed)
        priorities = policy.steps_until_recompute(state)
        if priorities is not None:
            assert priorities.shape == (LAYOUT.num_blocks,) and bool(torch.isfinite(priorities).all())
            assert bool((priorities >= 0).all())
        step = state.step
        policy.end_step(state)
        assert state.step == step + 1
        decisions.append((d.mode, None if d.blocks is None else d.blocks.tolist()))
    return decisions


@pytest.mark.parametrize("name", policy_names())
def test_policy_contract(name):
    config = decode_policy(name, {})
    # the config round-trips through the tagged union (what an entry point decodes)
    assert msgspec.convert(msgspec.to_builtins(config), PolicyConfig) == config and config.name == name
    policy = make_policy(config)
    assert policy.name == name and policy.config == config
    # a policy may remember a stream across its chunks (keyed by state.stream_key, as the
    # runtime sets it); each run here is a new stream
    state = policy.new_state(LAYOUT)
    state.stream_key = ("contract", 0)
    first = run(policy, state, seed=1)
    assert first[0][0] == "full"  # nothing cached yet: the first step of a chunk is computed
    state.reset()
    assert state.step == 0
    state.stream_key = ("contract", 1)
    assert run(policy, state, seed=1) == first  # reset() forgets the chunk: the same run again
    fresh = policy.new_state(LAYOUT)
    fresh.stream_key = ("contract", 2)
    assert run(policy, fresh, seed=1) == first  # one policy object, independent states
