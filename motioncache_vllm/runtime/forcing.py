"""The stock SkyReels-V2 diffusion-forcing schedule on the chunked runtime.

``SkyReelsV2DiffusionForcingPipeline.__call__`` denoises a window of latent frames with a
timestep matrix (``generate_timestep_matrix``): causal blocks start ``ar_step`` iterations
after the previous one (``ar_step = 0``: all together; ``>= steps``: one after the other),
and long videos run several windows of ``base_num_frames``, each starting from the last
``overlap_history`` frames of the one before (``addnoise_condition`` re-noises that prefix).
Every iteration it runs the transformer on the whole window, although with block-causal
attention a finished block (t = 0) cannot change and a block not started cannot influence
the others.

:class:`ForcingRun` runs the same matrix on :class:`~.chunked.DenoiseRun`'s units: per
iteration, first a commit pass for each block that finished at the previous one (its K/V at
t = 0 join the context), then one denoising unit per updated block, in order, each
attending to the context and to the K/V the earlier blocks wrote in this iteration, as in
the stock call. The cache policy then skips or partially recomputes each block's steps.
Without skips it reproduces the stock output up to float reassociation (the prefix's
``addnoise_condition`` noise is drawn once per window instead of once per iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motioncache_vllm.runtime.chunked import ChunkedRunner, DenoiseRun


@dataclass
class _ChunkUnits:
    """What ``DenoiseRun`` keeps for its one active chunk, for each of several active ones."""

    streams: dict
    scheduler: object
    recompute_counts: torch.Tensor


class ForcingRun(DenoiseRun):
    """One window of the diffusion-forcing schedule (see module docstring).

    ``step_matrix`` (iterations, frames) and ``update_mask`` come from the pipeline's own
    ``generate_timestep_matrix``; ``prefix_frames`` leading frames are finished (a long
    video's overlap) and committed first, at ``prefix_t`` from ``prefix_latents``.
    """

    def __init__(
        self,
        runner: ChunkedRunner,
        prompt_embeds: dict[str, torch.Tensor],
        latents: torch.Tensor,
        num_inference_steps: int,
        guidance_scale: float,
        step_matrix: torch.Tensor,
        update_mask: torch.Tensor,
        frames_per_chunk: int,
        prefix_frames: int = 0,
        prefix_latents: torch.Tensor | None = None,
        prefix_t: int = 0,
        request_id: str = "forcing",
    ) -> None:
        super().__init__(
            runner,
            prompt_embeds,
            latents,
            num_inference_steps,
            guidance_scale,
            request_id,
            None,
            frames_per_chunk=frames_per_chunk,
        )
        per = frames_per_chunk
        self.block_t = step_matrix[:, ::per]  # (iterations, blocks)
        self.block_update = update_mask[:, ::per]
        self.prefix_blocks = prefix_frames // per
        self.prefix_latents, self.prefix_t = prefix_latents, prefix_t
        self._active: dict[int, _ChunkUnits] = {}
        self.cut_guard = False  # blocks overlap in time here: the previous block need not be final

    @torch.no_grad()
    def run(self) -> None:
        """The whole window: prefix commits, then the matrix row by row."""
        per = self.frames_per_chunk
        for c in range(self.prefix_blocks):
            x = None if self.prefix_latents is None else self.prefix_latents[:, :, c * per : (c + 1) * per]
            self._unit(c, commit=True, x=x, t=self.prefix_t)
        finished: list[int] = []
        last_block = self.num_chunks - 1
        for row in range(len(self.block_t)):
            for c in finished:  # finished at the previous row: at t = 0 from now on
                if c < last_block and bool(self.block_update[row:, c + 1 :].any()):
                    self._unit(c, commit=True)
                else:
                    self._drop(c)
            finished = []
            for c in torch.nonzero(self.block_update[row]).flatten().tolist():
                self._unit(c, t=self.block_t[row, c])
                if row + 1 == len(self.block_t) or not bool(self.block_update[row + 1 :, c].any()):
                    finished.append(c)
        for c in list(self._active):
            self._drop(c)
        self.units_done = self.total_units
        self.close()

    # -- one unit of chunk c, on DenoiseRun's single-chunk methods ------------------------
    def _unit(self, c: int, commit: bool = False, x: torch.Tensor | None = None, t=None) -> None:
        per = self.frames_per_chunk
        lo, hi = c * per, (c + 1) * per
        state = self._active.pop(c, None)
        if state is None:
            self._begin_chunk(c, lo)
        else:
            self.streams, self._scheduler, self._recompute_counts = (
                state.streams,
                state.scheduler,
                state.recompute_counts,
            )
        if commit:
            self._commit(c, lo, hi, x=x, t=t or 0)
            return
        self._denoise(lo, hi, t)
        self._active[c] = _ChunkUnits(self.streams, self._scheduler, self._recompute_counts)
        self.streams = {}

    def _drop(self, c: int) -> None:
        """A finished block no later block attends to: free its pool blocks, no commit pass."""
        state = self._active.pop(c, None)
        if state is not None:
            for stream in state.streams.values():
                self.pool.release(stream.owner)


def window_latent_frames(temporal: int, num_frames: int, base_num_frames, overlap_history) -> list[int]:
    """Latent frames of each window of the stock call (as its ``prepare_latents`` sizes them)."""
    num_latent = (num_frames - 1) // temporal + 1
    if overlap_history is None or base_num_frames is None or num_frames <= base_num_frames:
        return [num_latent]
    overlap = (overlap_history - 1) // temporal + 1
    base = (base_num_frames - 1) // temporal + 1
    n_iter = 1 + (num_latent - base - 1) // (base - overlap) + 1
    return [base] + [min(num_latent - (it * (base - overlap) + overlap) + overlap, base) for it in range(1, n_iter)]


def diffusion_forcing_latents(pipe, runner: ChunkedRunner, embeds, args, generator, device):
    """Every window of the stock call, each a :class:`ForcingRun`: (final latents, the
    windows' CacheCounters).

    ``args`` holds the stock call's resolved arguments (see ``api._ForcingArgs``); the
    windows, their noise and their timestep matrices are the stock pipeline's own."""
    t_factor = pipe.vae_scale_factor_temporal
    pipe.scheduler.set_timesteps(args.num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    per = args.causal_block_size
    num_latent = (args.num_frames - 1) // t_factor + 1
    long_video = (
        args.overlap_history is not None
        and args.base_num_frames is not None
        and (args.num_frames > args.base_num_frames)
    )
    if long_video:
        overlap = (args.overlap_history - 1) // t_factor + 1
        base = (args.base_num_frames - 1) // t_factor + 1
        n_iter = 1 + (num_latent - base - 1) // (base - overlap) + 1
    else:
        overlap, base, n_iter = None, num_latent, 1
    accumulated, counters = None, []
    for it in range(n_iter):
        latents, frames, prefix, prefix_frames = pipe.prepare_latents(
            1,
            pipe.transformer.config.in_channels,
            args.height,
            args.width,
            args.num_frames,
            torch.float32,
            device,
            generator,
            None,
            video_latents=accumulated,
            base_latent_num_frames=base if long_video else None,
            causal_block_size=per,
            overlap_history_latent_frames=overlap,
            long_video_iter=it if long_video else None,
        )
        if frames % per:
            raise ValueError(f"a window of {frames} latent frames is not a whole number of causal blocks of {per}")
        prefix_latents, prefix_t = None, 0
        if prefix_frames > 0:
            latents[:, :, :prefix_frames] = prefix.to(pipe.transformer.dtype)
            if args.addnoise_condition > 0:  # as the stock loop conditions on the prefix
                noise = 0.001 * args.addnoise_condition
                clean = latents[:, :, :prefix_frames]
                prefix_latents = clean * (1.0 - noise) + torch.randn_like(clean) * noise
                prefix_t = int(args.addnoise_condition)
        step_matrix, _, update_mask, _ = pipe.generate_timestep_matrix(
            frames, timesteps, frames if long_video else base, args.ar_step, prefix_frames, per
        )
        run = ForcingRun(
            runner,
            embeds,
            latents,
            args.num_inference_steps,
            args.guidance_scale,
            step_matrix,
            update_mask,
            per,
            prefix_frames,
            prefix_latents,
            prefix_t,
            request_id=f"forcing-{it}",
        )
        try:
            run.run()
        finally:
            run.close()
        counters.append(run.counters)
        if long_video:
            accumulated = latents if accumulated is None else torch.cat([accumulated, latents[:, :, overlap:]], 2)
        else:
            accumulated = latents
    return accumulated, counters
