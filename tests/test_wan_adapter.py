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
