"""Model adapter for the Wan family (SkyReels-V2 DF, Wan 2.1/2.2; diffusers classes).

Where things are in these transformers, so that runtime code never copies a forward:

- block stack: ``transformer.blocks``, each called as
  ``block(hidden_states, encoder_hidden_states, temb, rotary_emb[, attention_mask])``;
- timestep modulation e0 (TeaCache's input): the ``temb`` argument of every block, i.e.
  ``timestep_proj``: SkyReels-V2 in diffusion-forcing mode (B, 6, N, D), Wan 2.2 with
  per-token timesteps (B, N, 6, D), one timestep per sample (B, 6, D);
- calling convention: SkyReels-V2 DF takes a timestep per frame and
  ``enable_diffusion_forcing=True``; ``WanTransformer3DModel`` takes one timestep per
  sample (a chunk of the chunked runtime shares one) — see :meth:`WanFamilyAdapter.call_kwargs`;
- self-attention: ``block.attn1`` with a swappable processor; RoPE: ``transformer.rope``;
- cross-attention: ``block.attn2`` (queries from the tokens, keys/values from the text);
- final norm/head: ``norm_out`` / ``proj_out`` after the last block (left untouched).

The adapter installs diffusers hooks on the blocks and a K/V-aware processor on every
``attn1``. While no :class:`StackExecution` is active they pass everything through
unchanged, so the model behaves exactly as before (and ``uninstall`` restores it).
While one is active, one transformer call runs a single chunk of frames:

- the head block asks the execution for a plan (full / skip / gather token subset);
- every block then runs on the gathered tokens with their own RoPE rows and per-token
  modulation; self-attention writes the fresh K/V of those tokens into the chunk's K/V
  slot and attends over ``[finished chunks' K/V | this chunk's K/V]``;
- the call's own RoPE table (``transformer.rope``) is not computed (every block gets its
  execution's rows), and the text projection and timestep embedding return their last
  result for equal input (the CFG branches of a step share the timestep, every call of a
  request the text): :class:`_MemoHook`;
- cross-attention reuses the text's K/V: the prompt embeddings do not change across a
  request's steps, so each layer's ``to_k``/``to_v`` of them run once per execution that
  keeps a :class:`TextKV` (the runtime's streams: once per chunk and CFG branch) instead of
  in every call (checked against the call's text each call, so other text recomputes);
- the tail block hands its output to the execution, which scatters it back
  (``h_out = h_in + R``) and stores the new residuals.

A batched call (``activate([ex_0, ex_1, ...])``, one execution per sample) stacks several
chunks of the same shape (other requests, other CFG branches) along the batch: each sample
plans on its own slice; the samples that run blocks are grouped by token count (all full
samples in one group, partial ones selecting as many tokens in another) and each group
runs the blocks as one call with per-sample temb, RoPE rows and text embeddings;
self-attention writes each sample's K/V into its own store and attends over its own
context (one SDPA call, contexts of different lengths padded and masked).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_dispatch import dispatch_attention_fn

_HOOK_NAME = "motioncache_block"
_MEMO_HOOK = "motioncache_memo"
MEMO_ENTRIES = 4
"""Results a memoised embedding keeps (a step's CFG branches, a few interleaved requests)."""
REUSE_CALL_INVARIANTS = True
"""Reuse what every transformer call of a request recomputes from the same values (the text's
cross-attention K/V, the text and timestep embeddings) and skip the unused RoPE table; False:
every call computes them, as the stock forward does (the frames are the same bit for bit)."""
ROPE_CACHE_BYTES = 64 * 2**20
"""Bound of an adapter's RoPE-row cache (least recently used rows go first)."""
SHARE_TOKEN_TEMB = True
"""Blocks get one modulation row per sample when all tokens share it (see :func:`shared_token_temb`)."""


def register_diffusers_block_metadata() -> None:
    """Let diffusers' own caches (FirstBlockCache, MagCache, PAB, ...) hook the SkyReels-V2
    block, which diffusers 0.42 registers only for Wan. Idempotent."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers.transformer_skyreels_v2 import SkyReelsV2TransformerBlock

    TransformerBlockRegistry._register()
    if SkyReelsV2TransformerBlock not in TransformerBlockRegistry._registry:
        TransformerBlockRegistry.register(
            model_class=SkyReelsV2TransformerBlock,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
        )


class KVStore(Protocol):
    """Per-layer K/V of one (request, branch), (1, rows, heads, head_dim): rows before the
    active chunk's are the context it attends to (every finished frame, or those a budgeted
    store kept)."""

    wants_attention: bool  # call observe_attention with each call's attention weights

    def keys(self, layer: int) -> torch.Tensor: ...

    def values(self, layer: int) -> torch.Tensor: ...

    def attention_bias(self, layer: int) -> torch.Tensor | None: ...

    def observe_attention(self, layer: int, weights: torch.Tensor) -> None: ...


class TextKV:
    """Cross-attention keys and values of one sample's text, per layer, (1, L, heads,
    head_dim) each: computed at the first call, reused while the call's text is the same
    (an execution that sees other text drops them)."""

    __slots__ = ("source", "layers")

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None  # the projected text the layers' K/V were computed from
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def check(self, text: torch.Tensor) -> None:
        """Keep the stored K/V only if they are of ``text`` (1, L, D): the same values."""
        source = self.source
        if source is text:
            return
        if source is None or source.shape != text.shape or not torch.equal(source, text):
            self.source, self.layers = text, {}


class StackExecution(Protocol):
    """What the runtime provides for one transformer call on one chunk."""

    kv: KVStore
    # optional: where the text's cross-attention K/V are kept between calls (without it,
    # every call recomputes them)
    text_kv: TextKV | None
    start: int  # first token of the chunk in the stream's K/V
    end: int  # one past its last token
    rope: tuple[torch.Tensor, torch.Tensor]  # (1, chunk tokens, 1, head_dim) cos/sin

    def plan(self, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor | None | bool:
        """Return ``None`` to run all tokens, a LongTensor of chunk token indices to run
        only those, or ``False`` to skip the stack."""

    def finish(self, hidden_out: torch.Tensor | None) -> torch.Tensor:
        """Output of the last block (None when skipped) -> full-size block-stack output."""


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan RoPE on interleaved channel pairs (same math as diffusers' SkyReels-V2 processor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class _Group:
    """Samples of one transformer call that run the blocks together: the same number of
    tokens (every full sample, or partial samples selecting as many tokens)."""

    __slots__ = ("executions", "tokens", "hidden", "temb", "rope", "encoder")

    def __init__(self, executions, tokens, hidden, temb, rope, encoder) -> None:
        self.executions: list[StackExecution] = executions
        self.tokens: list[torch.Tensor | None] = tokens  # per sample: None (all) or chunk token indices
        self.hidden, self.temb, self.rope, self.encoder = hidden, temb, rope, encoder


class _Run:
    """State of the stack for the current transformer call (between head and tail)."""

    __slots__ = ("executions", "plans", "groups", "group")

    def __init__(self, executions: list[StackExecution]) -> None:
        self.executions = executions
        self.plans: list[torch.Tensor | None | bool] = []
        self.groups: list[_Group] = []
        self.group: _Group | None = None  # the group whose blocks run now (read by the attention)


def _sample(x: torch.Tensor, i: int, batch: int) -> torch.Tensor:
    return x if batch == 1 else x[i : i + 1]


def shared_token_temb(temb: torch.Tensor, token_dim: int) -> torch.Tensor | None:
    """``temb`` with its token axis cut to one row when every token of every sample has the
    same modulation (a chunk of the chunked runtime shares one timestep), else None.

    Diffusion-forcing models get ``temb`` per token, (B, 6, N, D): each block then adds its
    table to it and modulates with (B, N, D) operands, six tensors the size of the hidden
    states per block, for values that are all equal along N. With one row the block's own
    code broadcasts it: the same products, bit for bit, for much less memory traffic."""
    if temb.dim() != 4 or temb.shape[token_dim] == 1:
        return None
    first = temb.narrow(token_dim, 0, 1)
    return first if torch.equal(temb, first.expand_as(temb)) else None


def _plan_groups(run: _Run, hidden: torch.Tensor, encoder: torch.Tensor, temb: torch.Tensor, token_dim: int):
    """Ask every sample's execution for its plan; group the samples that run blocks."""
    batch = len(run.executions)
    run.plans = [ex.plan(_sample(hidden, i, batch), _sample(temb, i, batch)) for i, ex in enumerate(run.executions)]
    for i, (ex, tokens) in enumerate(zip(run.executions, run.plans)):
        text_kv = getattr(ex, "text_kv", None)
        if text_kv is not None and tokens is not False:
            text_kv.check(_sample(encoder, i, batch))
    shared = shared_token_temb(temb, token_dim) if SHARE_TOKEN_TEMB else None
    if shared is not None:  # policies saw the full tensor above; the blocks get one row per sample
        temb = shared
    members: dict[int | None, list[int]] = {}
    for i, tokens in enumerate(run.plans):
        if tokens is not False:
            members.setdefault(None if tokens is None else len(tokens), []).append(i)
    for key, idx in members.items():
        tokens = [run.plans[i] for i in idx]
        hs, tembs, cos, sin = [], [], [], []
        for i, tok in zip(idx, tokens):
            h, e = _sample(hidden, i, batch), _sample(temb, i, batch)
            c, s = run.executions[i].rope
            if tok is not None:
                h = h[:, tok]
                e = e.index_select(token_dim, tok) if e.dim() == 4 and shared is None else e
                c, s = c[:, tok], s[:, tok]
            hs.append(h)
            tembs.append(e)
            cos.append(c)
            sin.append(s)
        if len(idx) == batch and key is None:  # every sample, all tokens: the call's own tensors
            h, e, enc = hidden, temb, encoder
        else:
            h, e = (hs[0], tembs[0]) if len(idx) == 1 else (torch.cat(hs), torch.cat(tembs))
            enc = encoder if len(idx) == batch else encoder[idx]
        rope = (cos[0], sin[0]) if len(idx) == 1 else (torch.cat(cos), torch.cat(sin))
        run.groups.append(_Group([run.executions[i] for i in idx], tokens, h, e, rope, enc))


class CachedSelfAttnProcessor:
    """Self-attention that reads and writes the stream's K/V while a run is active and
    defers to the model's original processor otherwise."""

    def __init__(self, adapter: WanFamilyAdapter, layer: int, original) -> None:
        self.adapter, self.layer, self.original = adapter, layer, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        run = self.adapter.run
        if run is None or run.group is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        group = run.group
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        cos, sin = group.rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if len(group.executions) == 1:
            out = self._attend(group.executions[0], group.tokens[0], q, k, v)
        else:
            out = self._attend_batch(group, q, k, v)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    def _write(self, ex: StackExecution, tokens: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor):
        keys, values = ex.kv.keys(self.layer), ex.kv.values(self.layer)
        if tokens is None:
            keys[:, ex.start : ex.end] = k
            values[:, ex.start : ex.end] = v
        else:  # fresh K/V for the selected tokens; the others keep their stale K/V
            index = tokens + ex.start
            keys.index_copy_(1, index, k)
            values.index_copy_(1, index, v)
        return keys, values

    def _attend(self, ex: StackExecution, tokens: torch.Tensor | None, q, k, v) -> torch.Tensor:
        """One sample: attention over ``[its context K/V | its chunk's K/V]``, (1, heads, n, d)."""
        keys, values = self._write(ex, tokens, k, v)
        q, keys, values = q.transpose(1, 2), keys[:, : ex.end].transpose(1, 2), values[:, : ex.end].transpose(1, 2)
        bias = ex.kv.attention_bias(self.layer)  # None unless the store merged tokens
        if bias is not None:
            bias = bias[..., : ex.end].to(q.dtype)
        if ex.kv.wants_attention:  # research stores score context tokens by attention received
            logits = (q @ keys.transpose(-1, -2)) * q.shape[-1] ** -0.5
            ex.kv.observe_attention(self.layer, torch.softmax(logits if bias is None else logits + bias, -1))
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)

    def _attend_batch(self, group: _Group, q, k, v) -> torch.Tensor:
        """Several samples, each over its own context: one SDPA call over their K/V padded
        to the longest context, a boolean mask hiding the padding (samples whose store
        biases or observes the attention run alone)."""
        executions = group.executions
        if any(ex.kv.wants_attention or ex.kv.attention_bias(self.layer) is not None for ex in executions):
            return torch.cat(
                [
                    self._attend(ex, t, q[j : j + 1], k[j : j + 1], v[j : j + 1])
                    for j, (ex, t) in enumerate(zip(executions, group.tokens))
                ]
            )
        stored = [
            self._write(ex, t, k[j : j + 1], v[j : j + 1]) for j, (ex, t) in enumerate(zip(executions, group.tokens))
        ]
        ends = [ex.end for ex in executions]
        longest, mask = max(ends), None
        if all(end == longest for end in ends):
            keys = torch.cat([kk[:, :longest] for kk, _ in stored])
            values = torch.cat([vv[:, :longest] for _, vv in stored])
        else:
            shape = (len(executions), longest, *k.shape[2:])
            keys, values = k.new_zeros(shape), v.new_zeros(shape)
            for j, ((kk, vv), end) in enumerate(zip(stored, ends)):
                keys[j, :end], values[j, :end] = kk[0, :end], vv[0, :end]
            mask = (torch.arange(longest) < torch.tensor(ends).unsqueeze(1)).view(len(ends), 1, 1, longest)
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), attn_mask=mask
        )


class CachedCrossAttnProcessor:
    """Cross-attention that takes the text's keys and values from each sample's
    :class:`TextKV` (computing them at its first call) while a run is active, and defers to
    the model's original processor otherwise. The same operations as diffusers' Wan /
    SkyReels-V2 processor on text-only conditioning, so the output is the same bit for bit."""

    def __init__(self, adapter: WanFamilyAdapter, layer: int, original) -> None:
        self.adapter, self.layer, self.original = adapter, layer, original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        run = self.adapter.run
        # image conditioning (I2V) or fused projections: the original processor's own path
        if run is None or run.group is None or attn.add_k_proj is not None or attn.fused_projections:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        group = run.group
        pairs = [self._text_kv(attn, ex, encoder_hidden_states, j) for j, ex in enumerate(group.executions)]
        if len(pairs) == 1:
            key, value = pairs[0]
        else:
            key, value = torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs])
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=getattr(self.original, "_attention_backend", None),
            parallel_config=getattr(self.original, "_parallel_config", None),
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _text_kv(self, attn, ex: StackExecution, text: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of sample ``j``'s text (1, L, heads, head_dim), from its store if it keeps one."""
        store = getattr(ex, "text_kv", None) if REUSE_CALL_INVARIANTS else None
        pair = None if store is None else store.layers.get(self.layer)
        if pair is None:
            sample = text if text.shape[0] == 1 else text[j : j + 1]
            key = attn.norm_k(attn.to_k(sample)).unflatten(2, (attn.heads, -1))
            value = attn.to_v(sample).unflatten(2, (attn.heads, -1))
            pair = (key, value)
            if store is not None:
                store.layers[self.layer] = pair
        return pair


class _BlockHook(ModelHook):
    _is_stateful = False

    def __init__(self, adapter: WanFamilyAdapter, is_head: bool, is_tail: bool) -> None:
        super().__init__()
        self.adapter, self.is_head, self.is_tail = adapter, is_head, is_tail

    def new_forward(self, module, hidden_states, encoder_hidden_states, temb, rotary_emb, *rest, **kwargs):
        forward = self.fn_ref.original_forward
        adapter = self.adapter
        if adapter.executions is None:
            return forward(hidden_states, encoder_hidden_states, temb, rotary_emb, *rest, **kwargs)
        if self.is_head:
            run = adapter.run = _Run(adapter.executions)
            _plan_groups(run, hidden_states, encoder_hidden_states, temb, adapter.temb_token_dim)
        run = adapter.run
        # the samples' hidden states live in their groups (a group may hold fewer tokens than
        # the call); the tensor the transformer passes between blocks is a placeholder
        for group in run.groups:
            run.group = group
            # no mask: a chunk sees every finished chunk and all of itself (block-causal)
            group.hidden = forward(group.hidden, group.encoder, group.temb, group.rope, *([None] if rest else []))
        run.group = None
        if not self.is_tail:
            return hidden_states
        adapter.run = None
        outputs: dict[int, torch.Tensor] = {}
        for group in run.groups:
            for j, ex in enumerate(group.executions):
                outputs[id(ex)] = group.hidden if len(group.executions) == 1 else group.hidden[j : j + 1]
        finished = [ex.finish(outputs.get(id(ex))) for ex in run.executions]
        return finished[0] if len(finished) == 1 else torch.cat(finished)


class _MemoHook(ModelHook):
    """While a run is active, a module of one tensor input returns its earlier output for
    an input equal to an earlier one (the last :data:`MEMO_ENTRIES`); the rest of the time
    it runs as usual. For the embeddings every call recomputes from the same values: the
    text projection (a request's prompt embeddings, per CFG branch) and the timestep
    embedding (both branches of a step, the same timestep). The modules are deterministic
    functions of their input, so a hit is the very tensor the computation would give (the
    forward reads these outputs and never writes them in place)."""

    _is_stateful = False

    def __init__(self, adapter: WanFamilyAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.entries: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy of an input, its output)

    def new_forward(self, module, x, *rest, **kwargs):
        forward = self.fn_ref.original_forward
        if self.adapter.executions is None or not REUSE_CALL_INVARIANTS or rest or kwargs:
            return forward(x, *rest, **kwargs)
        if not isinstance(x, torch.Tensor):
            return forward(x)
        for i, (seen, out) in enumerate(self.entries):
            if seen.shape == x.shape and seen.dtype == x.dtype and torch.equal(seen, x):
                self.entries.append(self.entries.pop(i))  # most recent last
                return out
        out = forward(x)
        if isinstance(out, torch.Tensor):
            self.entries.append((x.clone(), out))
            del self.entries[:-MEMO_ENTRIES]
        return out


class _NoRopeHook(ModelHook):
    """While a run is active the transformer's own RoPE table goes unused (each block gets
    its execution's rows), so it is not computed."""

    _is_stateful = False

    def __init__(self, adapter: WanFamilyAdapter) -> None:
        super().__init__()
        self.adapter = adapter

    def new_forward(self, module, *args, **kwargs):
        if self.adapter.executions is not None and REUSE_CALL_INVARIANTS:
            return None
        return self.fn_ref.original_forward(*args, **kwargs)


class WanFamilyAdapter:
    """Installs the hooks/processors on a Wan-family transformer (see module docstring)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        # transformer layers (diffusers' ``transformer.blocks``); "block" in this package is a spatial block
        self.layers = list(transformer.blocks)
        cfg = transformer.config
        self.patch_size = tuple(cfg.patch_size)
        self.dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.attention_head_dim
        self.num_layers = len(self.layers)
        # SkyReels-V2 (diffusion forcing) vs plain Wan: how timesteps go in, where tokens sit in temb
        self.diffusion_forcing = "enable_diffusion_forcing" in inspect.signature(transformer.forward).parameters
        self.temb_token_dim = 2 if self.diffusion_forcing else 1
        self.executions: list[StackExecution] | None = None  # the samples of the current call
        self.run: _Run | None = None
        # RoPE rows per (first frame, frames, grid), least recently used first; bounded in bytes
        # (one large request must not leave its tables behind for the life of the server)
        self._rope_cache: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._rope_bytes = 0
        self._installed = False
        self._installs = 0  # live users (e.g. interleaved generations): hooks stay while > 0

    # -- install / uninstall -------------------------------------------------------------
    def install(self) -> WanFamilyAdapter:
        """Install the hooks (reference counted: every ``install`` needs one ``uninstall``;
        the hooks are placed by the first and removed by the last)."""
        if self._installed:
            self._installs += 1
            return self
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            if registry.get_hook(_HOOK_NAME) is not None:
                raise RuntimeError("a MotionCache adapter is already installed on this transformer")
            registry.register_hook(_BlockHook(self, is_head=i == 0, is_tail=i == last), _HOOK_NAME)
            block.attn1.set_processor(CachedSelfAttnProcessor(self, i, block.attn1.processor))
            block.attn2.set_processor(CachedCrossAttnProcessor(self, i, block.attn2.processor))
        for module, hook in self._call_hooks():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, _MEMO_HOOK)
        self._installed, self._installs = True, 1
        return self

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installs = max(self._installs - 1, 0)
        if self._installs:
            return  # another user still runs on the hooks
        for block in self.layers:
            HookRegistry.check_if_exists_or_initialize(block).remove_hook(_HOOK_NAME, recurse=False)
            block.attn1.set_processor(block.attn1.processor.original)
            block.attn2.set_processor(block.attn2.processor.original)
        for module, _ in self._call_hooks():
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(_MEMO_HOOK, recurse=False)
        self._installed = False

    def _call_hooks(self) -> list[tuple[torch.nn.Module, ModelHook]]:
        """The per-call modules the adapter hooks: the RoPE table (skipped) and the
        embeddings of the text and the timestep (memoised), where the model has them."""
        hooks: list[tuple[torch.nn.Module, ModelHook]] = []
        rope = getattr(self.transformer, "rope", None)
        if rope is not None:
            hooks.append((rope, _NoRopeHook(self)))
        embedder = getattr(self.transformer, "condition_embedder", None)
        for name in ("text_embedder", "timesteps_proj", "time_embedder", "time_proj"):
            module = getattr(embedder, name, None)
            if isinstance(module, torch.nn.Module):
                hooks.append((module, _MemoHook(self)))
        return hooks

    def call_kwargs(self, frame_timesteps: torch.Tensor) -> dict:
        """Keyword arguments of a transformer call on one chunk whose frames have
        ``frame_timesteps`` (B, F): per frame in diffusion-forcing mode, else the chunk's
        (shared) timestep per sample."""
        if self.diffusion_forcing:
            return {"timestep": frame_timesteps, "enable_diffusion_forcing": True}
        if not bool((frame_timesteps == frame_timesteps[:, :1]).all()):
            raise ValueError(f"{type(self.transformer).__name__} takes one timestep per chunk, got {frame_timesteps}")
        return {"timestep": frame_timesteps[:, 0]}

    # -- geometry ------------------------------------------------------------------------
    def token_grid(self, latent_height: int, latent_width: int) -> tuple[int, int]:
        return latent_height // self.patch_size[1], latent_width // self.patch_size[2]

    def rope_rows(self, frame_start: int, frames: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE rows of latent frames ``[frame_start, frame_start + frames)`` at absolute positions."""
        key = (frame_start, frames, *grid)
        rows = self._rope_cache.get(key)
        if rows is not None:
            self._rope_cache.move_to_end(key)
            return rows
        h, w = grid
        # the rope module only reads the shape of its input
        probe = torch.empty((1, 1, frame_start + frames, h * self.patch_size[1], w * self.patch_size[2]))
        cos, sin = self.transformer.rope(probe)
        lo = frame_start * h * w
        rows = self._rope_cache[key] = (cos[:, lo:].contiguous(), sin[:, lo:].contiguous())
        self._rope_bytes += sum(t.numel() * t.element_size() for t in rows)
        while self._rope_bytes > ROPE_CACHE_BYTES and len(self._rope_cache) > 1:
            _, old = self._rope_cache.popitem(last=False)
            self._rope_bytes -= sum(t.numel() * t.element_size() for t in old)
        return rows

    def activate(self, execution: StackExecution | list[StackExecution] | None) -> None:
        """The execution of the next transformer call (batch 1), or one per sample of a
        batched call (their chunks have the same shape; each keeps its own K/V, RoPE rows,
        plan and residuals), or None: the model runs untouched."""
        if execution is None or isinstance(execution, list):
            self.executions = execution or None
        else:
            self.executions = [execution]
        self.run = None
