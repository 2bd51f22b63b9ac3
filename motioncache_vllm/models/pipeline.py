"""``MotionCacheSkyReelsPipeline``: diffusers' SkyReels-V2 DF pipeline with working defaults.

It is the stock ``SkyReelsV2DiffusionForcingPipeline`` (same denoising loop, same
components, so ``pipe.transformer.enable_cache(...)`` and other diffusers tools work)
plus three conveniences:

1. generation defaults stored with the weights (size, frames, steps, guidance, ...);
2. any ``4k+1`` frame count works: latent frames are padded up to a whole number of
   causal blocks and the decoded video is trimmed back, so the user gets exactly the
   frames asked for (the stock pipeline truncates the timestep matrix instead);
3. ``ar_step=None`` means pure chunk-by-chunk autoregression (each causal block starts
   once the previous one is finished), the mode the MotionCache runtime accelerates.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import SkyReelsV2DiffusionForcingPipeline


class MotionCacheSkyReelsPipeline(SkyReelsV2DiffusionForcingPipeline):
    def __init__(
        self,
        tokenizer,
        text_encoder,
        transformer,
        vae,
        scheduler,
        default_height: int = 64,
        default_width: int = 64,
        default_num_frames: int = 33,
        default_num_inference_steps: int = 30,
        default_guidance_scale: float = 5.0,
        default_max_sequence_length: int = 24,
    ) -> None:
        super().__init__(
            tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler
        )
        self.register_to_config(
            default_height=default_height,
            default_width=default_width,
            default_num_frames=default_num_frames,
            default_num_inference_steps=default_num_inference_steps,
            default_guidance_scale=default_guidance_scale,
            default_max_sequence_length=default_max_sequence_length,
        )

    @property
    def spatial_factor(self) -> int:
        """Pixels per transformer token along each side (VAE factor x patch size)."""
        return self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    @property
    def causal_block_size(self) -> int:
        """Latent frames per AR chunk: the transformer's causal block (SkyReels-V2 DF), else
        3, the chunk of the Wan-based causal models (CausVid, Self-Forcing)."""
        return max(int(getattr(self.transformer.config, "num_frame_per_block", 0) or 3), 1)

    def padded_num_frames(self, num_frames: int) -> int:
        """Smallest ``4k+1 >= num_frames`` whose latent frames fill whole causal blocks."""
        t = self.vae_scale_factor_temporal
        latent = (num_frames - 1) // t + 1
        block = self.causal_block_size
        latent = -(-latent // block) * block
        return (latent - 1) * t + 1

    def stock_arguments(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        ar_step: int | None = None,
        max_sequence_length: int | None = None,
        output_type: str = "np",
        **pipeline_kwargs: Any,
    ) -> tuple[dict[str, Any], int]:
        """This pipeline's call as the stock pipeline's keyword arguments (defaults filled
        in, frames padded to whole causal blocks) and the number of frames to return."""
        cfg = self.config
        num_frames = num_frames or cfg.default_num_frames
        steps = num_inference_steps or cfg.default_num_inference_steps
        stock = dict(
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=height or cfg.default_height,
            width=width or cfg.default_width,
            num_frames=self.padded_num_frames(num_frames),
            num_inference_steps=steps,
            guidance_scale=cfg.default_guidance_scale if guidance_scale is None else guidance_scale,
            ar_step=steps if ar_step is None else ar_step,  # >= steps: block i waits for block i-1 to finish
            max_sequence_length=max_sequence_length or cfg.default_max_sequence_length,
            output_type=output_type,
            **pipeline_kwargs,
        )
        return stock, num_frames

    @staticmethod
    def trim_frames(out, num_frames: int, output_type: str):
        """The first ``num_frames`` frames of a pipeline output (padding frames dropped)."""
        if output_type == "latent":
            return out
        frames = out.frames if hasattr(out, "frames") else out[0]
        if len(frames[0]) == num_frames:
            return out
        frames = frames[:, :num_frames] if not isinstance(frames, list) else [f[:num_frames] for f in frames]
        if hasattr(out, "frames"):
            out.frames = frames
            return out
        return (frames,)

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any):
        """Generate a video; every argument left ``None`` takes the model's default (see
        :meth:`stock_arguments`). Other keyword arguments (``generator``, ``prompt_embeds``,
        ``base_num_frames``, ``overlap_history``, ...) go to the diffusers pipeline as is."""
        stock, num_frames = self.stock_arguments(*args, **kwargs)
        out = super().__call__(**stock)
        return self.trim_frames(out, num_frames, stock["output_type"])
