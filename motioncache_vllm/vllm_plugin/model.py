"""The video model as a vLLM pooling model (registered as ``MotionCacheVideoModel``).

vLLM sees a one-layer decoder over byte tokens; the prompt of a request is its
:class:`~.messages.VideoRequest` as JSON bytes. The token shim does no useful work: it
exists so vLLM treats the model as an ordinary decoder-attention pooling model (KV cache,
chunked prefill, continuous batching) rather than an attention-free one. The video is made
by the pooler::

    engine step ─▶ forward(token ids)  (embedding + 1 attention layer, cheap)
                ─▶ VideoPooler ─▶ VideoWorker.engine_step: for every scheduled request,
                   one unit of its StepwiseGeneration (one denoising step of all CFG
                   branches, or a chunk commit) on the shared pipeline and pool; the
                   generation is created at the request's first step and kept in
                   ``pooling_metadata.pooling_states[i]`` across steps
                ─▶ uint8 tensor (msgpack VideoPayload) per request whose prompt ends, None for others

Step-level interleaving: the IO processor pads a request's prompt (its JSON bytes) with
filler tokens to at least its work (chunks x (steps + 1) units). With chunked prefill and
``long_prefill_token_threshold=1`` the scheduler gives each running request one token per
engine step, so one engine step = one unit of each running request, and a new request
starts while others run. Without the threshold a prompt is scheduled in one step and its
whole generation runs in that step (requests then run one after another). The response's
``stats["engine_steps"]`` lists the engine step of each unit; ``VideoWorker.records`` all.
"""

from __future__ import annotations

from collections.abc import Iterable, Set

import torch
import torch.nn as nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.pooler import Pooler, PoolingParamsUpdate
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.tasks import PoolingTask
from vllm.v1.outputs import PoolerOutput
from vllm.v1.pool.metadata import PoolingMetadata

from motioncache_vllm.vllm_plugin.worker import VideoWorker


class VideoPooler(Pooler):
    """Runs a request's generation when its prompt (= the encoded request) is complete."""

    def __init__(self, worker: VideoWorker) -> None:
        super().__init__()
        self.worker = worker  # a plain object, not a submodule: its weights are not vLLM's

    def get_supported_tasks(self) -> Set[PoolingTask]:
        return {"plugin"}

    def get_pooling_updates(self, task: PoolingTask) -> PoolingParamsUpdate:
        # the request travels in the prompt: the pooler needs the token ids themselves
        return PoolingParamsUpdate(requires_token_ids=True)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata) -> PoolerOutput:
        finished = pooling_metadata.get_pooling_cursor().get_finished_mask()
        prompts = pooling_metadata.get_prompt_token_ids_cpu()
        # one unit (denoising step or chunk commit) of every scheduled request; the request's
        # generation lives in its PoolingStates, which vLLM keeps across engine steps
        return self.worker.engine_step(pooling_metadata.pooling_states, prompts, finished)


class MotionCacheVideoModel(nn.Module):
    """vLLM model class; ``config.json`` field ``motioncache_pipeline`` names the diffusers pipeline."""

    is_pooling_model = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
        self.qkv_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        # the layer name must hold exactly one integer (vLLM derives the layer index from it)
        self.attn = Attention(
            heads,
            head_dim,
            head_dim**-0.5,
            num_kv_heads=heads,
            cache_config=vllm_config.cache_config,
            prefix=f"{prefix}.layers.0.attn" if prefix else "layers.0.attn",
        )
        worker = VideoWorker(getattr(config, "motioncache_pipeline", "embedded"), vllm_config.additional_config)
        self.pooler = VideoPooler(worker)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        q, k, v = self.qkv_proj(hidden).chunk(3, dim=-1)
        return self.attn(q, k, v)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise ValueError(f"unexpected weight {name!r} in the model folder; expected {sorted(params)}")
            default_weight_loader(params[name], tensor)
            loaded.add(name)
        return loaded
