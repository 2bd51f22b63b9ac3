"""A request's chunked generation as a resumable object: :class:`StepwiseGeneration`.

``generate_video(runtime="chunked")`` is this object stepped to the end, so the two give
the same video bit for bit. A server interleaves several of them on one pipeline (the
vLLM plugin advances every running request by one unit per engine step)::

    gen = StepwiseGeneration(pipe, request, cache=cache, pool=pool, request_id="a")
    while not gen.done:
        gen.step()          # one denoising step of the active chunk (all CFG branches),
                            # or the chunk's commit pass
    result = gen.result()   # GenerationResult, as generate_video returns it

Construction encodes the prompt and draws the initial noise (seeding the global RNG as
``generate_video`` does), so it must not be interleaved with another request's noise
draw; the units themselves use no randomness. Several live generations may share one
pipeline and one pool (owners ``(request_id, chunk, branch)``); the transformer's hooks
stay installed while any of them is live and are removed when the last one finishes or
is closed.
"""

from __future__ import annotations

import time
import uuid

import torch

from motioncache_vllm.blocks.pool import ActivationPool
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.runtime.generate import (
    GenerationResult,
    ResolvedRequest,
    decode_latents,
    make_pool,
    resolve,
    seeded_generator,
)


class StepwiseGeneration:
    """One chunked-runtime generation, advanced one unit at a time (see module docstring)."""

    def __init__(
        self,
        pipe,
        request: GenerationRequest | ResolvedRequest,
        cache: CacheConfig | None = None,
        pool: ActivationPool | None = None,
        request_id: str | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> None:
        from tqdm.auto import tqdm

        from motioncache_vllm.policies import make_policy
        from motioncache_vllm.policies.calibration import model_calibration
        from motioncache_vllm.runtime.chunked import ChunkedRunner

        self.pipe = pipe
        self.cache = cache = cache or CacheConfig()
        r = self.request = request if isinstance(request, ResolvedRequest) else resolve(pipe, request)
        self.request_id = request_id or uuid.uuid4().hex
        self._result: GenerationResult | None = None
        with torch.inference_mode():  # as generate_video (see its docstring)
            coefficients, fit_range, mag_ratios = model_calibration(
                getattr(pipe, "name_or_path", None), pipe.transformer.config
            )
            policy = make_policy(cache.policy, cache.policy_config, coefficients, fit_range, mag_ratios)
            self.pool = pool if pool is not None else make_pool(pipe, cache)
            device = pipe._execution_device
            self._t0 = time.perf_counter()
            generator = generator if generator is not None else seeded_generator(r.seed)
            pipe._guidance_scale = r.guidance
            cond, uncond = pipe.encode_prompt(
                r.prompt, None, do_classifier_free_guidance=r.guidance > 1.0, num_videos_per_prompt=1,
                max_sequence_length=r.max_sequence_length, device=device,
            )
            padded = pipe.padded_num_frames(r.num_frames)
            latents = pipe.prepare_latents(
                1, pipe.transformer.config.in_channels, r.height, r.width, padded, torch.float32, device, generator
            )[0]
            self.runner = ChunkedRunner(pipe, policy, self.pool, tile=cache.tile, cfg_shared=cache.cfg_shared)
            chunks = latents.shape[2] // pipe.causal_block_size
            self._bar = tqdm(total=chunks * r.steps, disable=not progress, leave=False, desc=cache.policy)
            embeds = {"cond": cond.to(pipe.transformer.dtype)}
            if uncond is not None:
                embeds["uncond"] = uncond.to(pipe.transformer.dtype)
            self._latent_shape = latents.shape
            self.run = self.runner.start(
                embeds, latents, r.steps, r.guidance, request_id=self.request_id, progress=self._bar
            )

    # -- progress ------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.run.done

    @property
    def total_steps(self) -> int:
        """Units of this request: chunks x (denoising steps + 1 commit)."""
        return self.run.total_units

    @property
    def steps_done(self) -> int:
        return self.run.units_done

    @property
    def position(self) -> tuple[int, int]:
        """(chunk, unit in chunk) of the next unit; unit == steps is the chunk's commit."""
        return self.run.position

    def step(self) -> str:
        """Advance by one unit: ``"denoise"`` (one step, every CFG branch) or ``"commit"``.
        On an error the generation is closed (its pool blocks freed) and the error raised."""
        try:
            with torch.inference_mode():
                return self.run.step()
        except BaseException:
            self.close()
            raise
        finally:
            if self.run.done or self.run._closed:
                self._bar.close()

    def close(self) -> None:
        """Abandon (or finish) the generation: frees its pool blocks and its hold on the
        transformer's hooks. Idempotent."""
        self.run.close()
        self._bar.close()

    # -- output --------------------------------------------------------------------------
    def result(self) -> GenerationResult:
        """The decoded video and stats (decoded on the first call)."""
        if self._result is not None:
            return self._result
        from motioncache_vllm.runtime.chunked import recompute_map_frames

        with torch.inference_mode():
            result = self.run.result()
            r, pipe, pool, cache = self.request, self.pipe, self.pool, self.cache
            frames = decode_latents(pipe, result.latents, r.num_frames)
        wall = time.perf_counter() - self._t0
        c = result.counters
        grid = self.runner.adapter.token_grid(self._latent_shape[3], self._latent_shape[4])
        stats = dict(
            token_steps_total=c.token_steps_total,
            token_steps_computed=c.token_steps_computed,
            commit_token_passes=c.commit_tokens,
            # every token pass counts, the commit passes too: they are work in both runs
            ideal_speedup=round(
                (c.token_steps_total + c.commit_tokens) / max(c.token_steps_computed + c.commit_tokens, 1), 4
            ),
            full_steps=c.full_steps,
            partial_steps=c.partial_steps,
            skipped_steps=c.skipped_steps,
            forced_blocks=c.forced_blocks,
            pool_peak_bytes=pool.stats.peak_bytes,
            pool_budget_bytes=pool.budget_bytes,
            evictions=pool.stats.evictions,
            kv_cache_bytes=result.kv_bytes,
            timings={k: round(v, 4) for k, v in c.timings.items()},
        )
        self._result = GenerationResult(
            frames=frames, wall_s=wall, steps=r.steps, guidance=r.guidance, stats=stats,
            recompute_map=recompute_map_frames(c, grid, cache.tile),
        )
        return self._result
