"""``motioncache_video`` IO processor: client JSON <-> engine prompts, pooler output -> video.

Runs in the front-end process only (API server or the ``LLM`` object's process).
Validation happens here, before the request reaches the engine, so a malformed request
costs nothing on the worker and cannot disturb running ones.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from vllm.config import VllmConfig
from vllm.inputs import PromptType
from vllm.outputs import PoolingRequestOutput
from vllm.plugins.io_processors.interface import IOProcessor
from vllm.pooling_params import PoolingParams
from vllm.renderers import BaseRenderer

from motioncache_vllm.limits import ModelGeometry, ServeSettings, read_geometry
from motioncache_vllm.vllm_plugin.messages import (
    FILLER_TOKEN,
    EngineCacheSettings,
    VideoGenerationError,
    VideoRequest,
    VideoResponse,
    tensor_to_payload,
    validate_request,
    work_units,
)

VIDEO_FPS = 16


def encode_mp4(frames: np.ndarray, fps: int = VIDEO_FPS) -> bytes:
    from motioncache_vllm.video_io import write_video

    with tempfile.TemporaryDirectory(prefix="motioncache-") as tmp:
        return write_video(Path(tmp) / "video.mp4", frames, fps=fps).read_bytes()


def served_geometry(vllm_config: VllmConfig) -> ModelGeometry:
    """The geometry of the served pipeline, read from its folder's JSON files (the front end
    does not load the pipeline; a folder without generation defaults gets the loader's)."""
    from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS, resolve_model_path

    hf_config = vllm_config.model_config.hf_config
    folder = resolve_model_path(getattr(hf_config, "motioncache_pipeline", "embedded"))
    return read_geometry(folder, SKYREELS_DF_DEFAULTS)


class VideoIOProcessor(IOProcessor[VideoRequest, dict[str, Any]]):
    """Input: ``{"prompt": str, "num_frames": int, "height": int, "width": int,
    "num_inference_steps": int, "guidance_scale": float, "seed": int,
    "cache": {"policy": str, "policy_config": {...}}}`` (all but ``prompt`` optional).
    Output: :class:`~.messages.VideoResponse` as a dict."""

    def __init__(self, vllm_config: VllmConfig, renderer: BaseRenderer) -> None:
        super().__init__(vllm_config, renderer)
        # same defaults as the worker: a request naming an unknown policy is refused here
        self.settings = EngineCacheSettings.from_additional_config(vllm_config.additional_config)
        serve = ServeSettings.from_additional_config(vllm_config.additional_config)
        self.geometry = served_geometry(vllm_config)
        self.memory_budget_bytes = serve.memory_budget_bytes(self.settings.pool.pool_mib)
        self.max_units = vllm_config.model_config.max_model_len

    def parse_data(self, data: object) -> VideoRequest:
        from motioncache_vllm.vllm_plugin.messages import RequestTooLargeError

        try:
            return validate_request(
                data,
                self.settings,
                self.geometry,
                memory_budget_bytes=self.memory_budget_bytes,
                max_units=self.max_units,
            )
        except RequestTooLargeError:
            from motioncache_vllm.vllm_plugin.metrics import count_request

            count_request("refused")
            raise

    def merge_pooling_params(self, params: PoolingParams | None = None) -> PoolingParams:
        params = params or PoolingParams()
        params.task = "plugin"
        return params

    def pre_process(self, prompt: VideoRequest, request_id: str | None = None, **kwargs) -> PromptType:
        # one token per byte of the request's JSON: the request reaches the pooler intact;
        # then filler tokens up to the request's work, so that with one token per engine
        # step (long_prefill_token_threshold=1) its prompt lasts as many steps as its units
        ids = list(msgspec.json.encode(prompt))
        g = self.geometry
        steps = prompt.num_inference_steps or g.default_steps
        work = work_units(prompt.num_frames or g.default_num_frames, steps, g.causal_block, g.temporal_factor)
        if prompt.continue_from is not None and len(prompt.continue_from.plan.segments) > 1:
            # an extension: the units of its new segment (a lost session regenerates more,
            # which then finishes in the last step)
            work -= work_units(
                prompt.continue_from.plan.segments[-2].num_frames, steps, g.causal_block, g.temporal_factor
            )
        ids += [FILLER_TOKEN] * max(work - len(ids), 0)
        return {"prompt_token_ids": ids}

    def post_process(
        self, model_output: Sequence[PoolingRequestOutput], request_id: str | None = None, **kwargs
    ) -> dict[str, Any]:
        if len(model_output) != 1:
            raise VideoGenerationError(f"expected one engine output per video request, got {len(model_output)}")
        output = model_output[0]
        payload = tensor_to_payload(output.outputs.data)
        rid = request_id or output.request_id
        if payload.error is not None:
            raise VideoGenerationError(f"video request {rid} failed: {payload.error}")
        from motioncache_vllm.vllm_plugin.metrics import record

        record(payload.stats)
        frames = np.frombuffer(payload.frames, dtype=np.uint8).reshape(payload.shape)
        response = VideoResponse(
            id=rid,
            video=base64.b64encode(encode_mp4(frames)).decode("ascii"),
            stats=payload.stats,
            num_frames=int(frames.shape[0]),
            height=int(frames.shape[1]),
            width=int(frames.shape[2]),
            frames_sha256=hashlib.sha256(payload.frames).hexdigest(),
            frame_sha256=[hashlib.sha256(frame.tobytes()).hexdigest() for frame in frames],
            plan=payload.plan,
        )
        return msgspec.to_builtins(response)
