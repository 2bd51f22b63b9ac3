"""models/wan_adapter.py: hooks installed by reference count and removed without a trace."""

import pytest
import torch

from motioncache_vllm.models.wan_adapter import CachedSelfAttnProcessor
from motioncache_vllm.runtime.chunked import shared_adapter


def test_install_is_reference_counted_and_uninstall_restores_the_processors(tiny_pipe):
    blocks = tiny_pipe.transformer.blocks
    originals = [b.attn1.processor for b in blocks]
    adapter = shared_adapter(tiny_pipe.transformer)
    assert shared_adapter(tiny_pipe.transformer) is adapter  # one adapter per transformer
    assert adapter.num_layers == len(adapter.layers) == len(blocks)
    adapter.install()
    adapter.install()
    try:
        assert all(isinstance(b.attn1.processor, CachedSelfAttnProcessor) for b in blocks)
        adapter.uninstall()  # another user still runs on the hooks
        assert all(isinstance(b.attn1.processor, CachedSelfAttnProcessor) for b in blocks)
    finally:
        adapter.uninstall()
    assert [b.attn1.processor for b in blocks] == originals


def test_call_kwargs_and_token_grid(tiny_pipe):
    adapter = shared_adapter(tiny_pipe.transformer)
    t = torch.tensor([[500, 500]])
    kwargs = adapter.call_kwargs(t)
    assert kwargs["enable_diffusion_forcing"] is True and torch.equal(kwargs["timestep"], t)
    p = tiny_pipe.transformer.config.patch_size
    assert adapter.token_grid(8 * p[1], 4 * p[2]) == (8, 4)
    if not adapter.diffusion_forcing:
        with pytest.raises(ValueError):
            adapter.call_kwargs(torch.tensor([[1, 2]]))


def test_shared_token_temb_keeps_one_row_only_when_every_token_has_it():
    from motioncache_vllm.models.wan_adapter import shared_token_temb

    row = torch.randn(2, 6, 1, 8)
    same = row.expand(2, 6, 5, 8).contiguous()
    assert torch.equal(shared_token_temb(same, 2), row)
    differs = same.clone()
    differs[1, :, 3] += 1e-6  # one token of one sample at another timestep
    assert shared_token_temb(differs, 2) is None
    assert shared_token_temb(torch.randn(2, 6, 8), 1) is None  # one timestep per sample: nothing to share


@pytest.mark.parametrize("policy,config", [("none", {}), ("motion", {"threshold": 1.5})])
def test_blocks_get_one_modulation_row_and_the_same_frames(tiny_pipe, monkeypatch, policy, config):
    """A chunk shares one timestep: the blocks get (B, 6, 1, D) instead of one row per token,
    and the latents are bit-identical to the per-token path's (the block broadcasts the row)."""
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.models import wan_adapter
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    def latents(request, cache):
        gen = StepwiseGeneration(tiny_pipe, request, cache=cache)
        while not gen.done:
            gen.step()
        return gen.run.latents.clone()

    block = tiny_pipe.transformer.blocks[1]
    forward, shapes = block.forward, []

    def spy(hidden_states, encoder_hidden_states, temb, *rest):
        shapes.append(tuple(temb.shape))
        return forward(hidden_states, encoder_hidden_states, temb, *rest)

    monkeypatch.setattr(block, "forward", spy)  # the runtime's hook binds (and restores) the block's forward
    request = GenerationRequest(prompt="a red circle moves right", num_frames=9, num_inference_steps=3, seed=1)
    cache = CacheConfig.decode(policy=policy, policy_config=config)
    shared = latents(request, cache)
    assert shapes and all(s[2] == 1 for s in shapes), shapes[:3]
    shapes.clear()
    monkeypatch.setattr(wan_adapter, "SHARE_TOKEN_TEMB", False)
    per_token = latents(request, cache)
    assert shapes and all(s[2] > 1 for s in shapes)
    assert torch.equal(shared, per_token)
