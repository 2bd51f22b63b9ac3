"""models/wan_adapter.py: hooks installed by reference count and removed without a trace."""

import numpy as np
import pytest
import torch
from diffusers.hooks import HookRegistry

from motioncache_vllm.models.wan_adapter import CachedCrossAttnProcessor, CachedSelfAttnProcessor
from motioncache_vllm.runtime.chunked import shared_adapter


def test_install_is_reference_counted_and_uninstall_restores_the_processors(tiny_pipe):
    blocks = tiny_pipe.transformer.blocks
    originals = [b.attn1.processor for b in blocks]
    cross = [b.attn2.processor for b in blocks]
    adapter = shared_adapter(tiny_pipe.transformer)
    assert shared_adapter(tiny_pipe.transformer) is adapter  # one adapter per transformer
    assert adapter.num_layers == len(adapter.layers) == len(blocks)
    adapter.install()
    adapter.install()
    try:
        assert all(isinstance(b.attn1.processor, CachedSelfAttnProcessor) for b in blocks)
        assert all(isinstance(b.attn2.processor, CachedCrossAttnProcessor) for b in blocks)
        adapter.uninstall()  # another user still runs on the hooks
        assert all(isinstance(b.attn1.processor, CachedSelfAttnProcessor) for b in blocks)
    finally:
        adapter.uninstall()
    assert [b.attn1.processor for b in blocks] == originals
    assert [b.attn2.processor for b in blocks] == cross


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


def _generate(pipe, request, cache, pool=None, request_id=None):
    """A StepwiseGeneration run to the end: (its frames, its number of chunks)."""
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    gen = StepwiseGeneration(pipe, request, cache=cache, pool=pool, request_id=request_id)
    while not gen.done:
        gen.step()
    return gen.result().frames, gen.run.num_chunks


@pytest.mark.parametrize("policy,config", [("none", {}), ("motion", {"threshold": 1.5})])
def test_reused_text_kv_and_embeddings_give_the_frames_of_recomputing_them(tiny_pipe, monkeypatch, policy, config):
    """Cross-attention reuses each stream's text K/V and the embeddings are memoised: the
    frames equal those of recomputing everything in every call (REUSE_CALL_INVARIANTS off),
    and ``to_k`` of the text runs once per chunk and CFG branch instead of once per call."""
    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.models import wan_adapter

    request = GenerationRequest(prompt="a red circle moves right", num_frames=9, num_inference_steps=4, seed=2)
    # one call per CFG branch: the hooks below count calls (a stacked call is one for both)
    cache = CacheConfig.decode(policy=policy, policy_config=config, cfg_batched=False)
    to_k = tiny_pipe.transformer.blocks[0].attn2.to_k
    # the text projection's first layer: a memo hit skips it (a hook on the projection itself would count hits)
    text_embedder = tiny_pipe.transformer.condition_embedder.text_embedder.linear_1
    calls = {"to_k": 0, "text": 0}
    handles = [
        to_k.register_forward_hook(lambda *a: calls.__setitem__("to_k", calls["to_k"] + 1)),
        text_embedder.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1)),
    ]
    try:
        reused, chunks = _generate(tiny_pipe, request, cache)
        once = dict(calls)
        calls.update(to_k=0, text=0)
        monkeypatch.setattr(wan_adapter, "REUSE_CALL_INVARIANTS", False)
        recomputed, _ = _generate(tiny_pipe, request, cache)
    finally:
        for handle in handles:
            handle.remove()
    assert np.array_equal(reused, recomputed)
    assert once == {"to_k": 2 * chunks, "text": 2}  # per chunk and CFG branch; per branch
    calls_per_chunk = 2 * (4 + 1)  # CFG branches x (steps + commit)
    assert calls["text"] == chunks * calls_per_chunk
    if policy == "none":
        assert calls["to_k"] == chunks * calls_per_chunk
    else:  # a skipped step runs no block
        assert once["to_k"] < calls["to_k"] <= chunks * calls_per_chunk


def test_interleaved_requests_with_different_prompts_keep_their_own_text(tiny_pipe):
    """Two requests with different prompts advanced in turn on one transformer (one shared
    adapter, one pool): each one's frames equal its run alone, bit for bit; then nothing of
    their text is left: each stream's text K/V and the memoised embeddings go with them."""
    import gc
    import weakref

    from motioncache_vllm.config import CacheConfig, GenerationRequest
    from motioncache_vllm.models.wan_adapter import _MEMO_HOOK
    from motioncache_vllm.runtime.request import make_pool
    from motioncache_vllm.runtime.stepwise import StepwiseGeneration

    cache = CacheConfig.decode(policy="motion", policy_config={"threshold": 1.5})
    requests = [
        GenerationRequest(prompt="a red circle moves right", num_frames=9, num_inference_steps=4, seed=3),
        GenerationRequest(prompt="a blue square moves up", num_frames=9, num_inference_steps=4, seed=3),
    ]
    alone = [_generate(tiny_pipe, r, cache)[0] for r in requests]
    pool = make_pool(tiny_pipe, cache.pool)
    gens = [
        StepwiseGeneration(tiny_pipe, r, cache=cache, pool=pool, request_id=f"r{i}") for i, r in enumerate(requests)
    ]
    stored = []  # weak references to every stream's text K/V
    while not all(g.done for g in gens):
        for g in gens:
            if not g.done:
                g.step()
                layers = [s.text_kv.layers for s in g.run.streams.values()]
                stored += [weakref.ref(t) for kv in layers for pair in kv.values() for t in pair]
    assert stored
    for g, ref in zip(gens, alone):
        assert np.array_equal(g.result().frames, ref)
    # the texts differ, so a K/V reused across the requests would have changed the frames
    assert not np.array_equal(alone[0], alone[1])
    del gens, g, layers
    gc.collect()
    assert all(r() is None for r in stored)
    assert pool.tables == {}
    embedder = tiny_pipe.transformer.condition_embedder
    for module in (tiny_pipe.transformer.rope, embedder.text_embedder, embedder.time_proj):
        assert HookRegistry.check_if_exists_or_initialize(module).get_hook(_MEMO_HOOK) is None


def test_text_kv_is_dropped_when_the_text_changes():
    from motioncache_vllm.models.wan_adapter import TextKV

    store, text = TextKV(), torch.randn(1, 4, 8)
    store.check(text)
    store.layers[0] = (torch.zeros(1), torch.zeros(1))
    store.check(text.clone())  # the same values: kept
    assert 0 in store.layers
    other = text.clone()
    other[0, 3, 7] += 1e-6
    store.check(other)
    assert store.layers == {} and store.source is other
