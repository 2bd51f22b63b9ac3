"""The runtime's scene-cut guard on real compute (shipped model, real scene extensions).

A plan of two scenes (the second a ``VideoPlan`` extension with another caption, as a
server's session extension) has a hard cut before its third chunk; one caption for the
same three chunks has none. The guard must flag exactly the cut chunk (checked after the
extension, from the snapshot's latents) and there compute every step in full (session 9;
every other step left a held-out cut chunk 3.5-4.8 dB short). A bouncing square (the motion
the session-7 signal took for a cut) must not be flagged, with the same threshold that
catches the cut: at full resolution its first-step change (0.93) was above the cut's
(0.90); on the guard's grid it is 0.65 against 1.02. The band below the threshold (a cut
whose first-step estimate is not yet decisive) has its own action: the same cut, with the
threshold raised above it, must land in the band and get every other step in full with
``cut_band_every=2`` (the whole chunk by default).
"""

import pytest
import torch

from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.policies import InvalidPolicyConfig
from motioncache_vllm.runtime.request import resolve
from motioncache_vllm.runtime.snapshot import VideoPlan
from motioncache_vllm.runtime.stepwise import PlanGeneration

STEPS = 10
EVERY_STEP = 2 * STEPS  # a block computed at every step, in both CFG branches (the recompute map counts each)
POLICY = {"threshold": 1.0, "max_skip_steps": 9}  # skips most steps of a chunk when left alone


def _generate(pipe, prompts: list[str], policy_config: dict, seed: int = 0):
    plan = VideoPlan.of(
        resolve(
            pipe,
            GenerationRequest(
                prompt=prompts[0], num_frames=21 if len(prompts) > 1 else 33, seed=seed, num_inference_steps=STEPS
            ),
        )
    )
    if len(prompts) > 1:
        plan = plan.extended(prompts[1], 33, seed=1)
    gen = PlanGeneration(pipe, plan, cache=CacheConfig.decode("magcache", {**POLICY, **policy_config}))
    with torch.inference_mode():
        while not gen.done:
            gen.step()
        return gen.result()


def test_the_guard_fires_on_a_real_cut_and_not_on_one_scene(embedded_pipe):
    scene = "a cyan square moves right slowly"
    cut = _generate(embedded_pipe, [scene, "a magenta triangle moves left quickly"], {})
    smooth = _generate(embedded_pipe, [scene], {})
    assert cut.stats["scene_cuts"] == [2]
    assert smooth.stats["scene_cuts"] == []
    assert cut.stats["scene_cut_band"] == smooth.stats["scene_cut_band"] == []
    # on the cut chunk every step ran in full, and nothing changed before it
    per_chunk = embedded_pipe.causal_block_size
    off = _generate(embedded_pipe, [scene, "a magenta triangle moves left quickly"], {"cut_full_every": 0})
    assert off.stats["scene_cuts"] == off.stats["scene_cut_band"] == []
    before, at_cut = slice(0, 2 * per_chunk), slice(2 * per_chunk, None)
    assert (cut.recompute_map[before] == off.recompute_map[before]).all()
    assert int(cut.recompute_map[at_cut].min()) == EVERY_STEP
    assert int(off.recompute_map[at_cut].max()) < EVERY_STEP // 2  # the policy alone skips most steps there
    # the same cut with the threshold above it: in the band, every other step (0, 2, ..., 8) in full
    band = _generate(
        embedded_pipe,
        [scene, "a magenta triangle moves left quickly"],
        {"cut_threshold": 1.5, "cut_band_threshold": 0.9, "cut_band_every": 2},
    )
    assert (band.stats["scene_cuts"], band.stats["scene_cut_band"]) == ([], [2])
    assert band.stats["chunk_changes"] == cut.stats["chunk_changes"]
    assert (band.recompute_map[before] == off.recompute_map[before]).all()
    lowest, highest = int(band.recompute_map[at_cut].min()), int(band.recompute_map[at_cut].max())
    assert EVERY_STEP // 2 <= lowest <= highest < EVERY_STEP


def test_a_bouncing_square_is_not_a_cut(embedded_pipe):
    bounce = _generate(embedded_pipe, ["a green square bounces left"], {})
    assert len(bounce.stats["chunk_changes"]) == 2  # chunks 1 and 2 were both checked
    assert bounce.stats["scene_cuts"] == bounce.stats["scene_cut_band"] == []
    off = _generate(embedded_pipe, ["a green square bounces left"], {"cut_full_every": 0})
    assert (bounce.recompute_map == off.recompute_map).all()  # no step forced anywhere


def test_the_guard_settings_are_checked_for_every_policy():
    for policy in ("none", "magcache", "tokenrate"):
        cfg = CacheConfig.decode(policy, {"cut_threshold": 0.7, "cut_grid": 8}).policy
        assert (cfg.cut_threshold, cfg.cut_grid, cfg.cut_full_every) == (0.7, 8, 1)
        assert (cfg.cut_band_threshold, cfg.cut_band_every) == (0.7, 1)
    with pytest.raises(InvalidPolicyConfig, match=r"cut_band_threshold \(0.8\) must not exceed cut_threshold"):
        CacheConfig.decode("magcache", {"cut_threshold": 0.75, "cut_band_threshold": 0.8})
    with pytest.raises(InvalidPolicyConfig, match=r">= 0 - at `\$.cut_band_every`"):
        CacheConfig.decode("tokenrate", {"cut_band_every": -1})
    with pytest.raises(InvalidPolicyConfig, match=r"<= 2.0 - at `\$.cut_threshold`"):
        CacheConfig.decode("magcache", {"cut_threshold": 3})
    with pytest.raises(InvalidPolicyConfig, match=r">= 2 - at `\$.cut_grid`"):
        CacheConfig.decode("magcache", {"cut_grid": 1})
    with pytest.raises(InvalidPolicyConfig, match="unknown field `cut_factor`"):  # session 7's rule, gone
        CacheConfig.decode("magcache", {"cut_factor": 1.5})
