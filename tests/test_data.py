import numpy as np
import pytest

from motioncache_vllm.data.procedural import HELD_OUT_TRIPLES, KINDS, VOCABULARY, ClipGenerator, held_out_prompts
from motioncache_vllm.data.tracker import check
from motioncache_vllm.models.embedded import build_tokenizer


def test_same_seed_same_clip_and_different_seed_differs():
    a, b = ClipGenerator(seed=3).clip(7), ClipGenerator(seed=3).clip(7)
    assert a.caption == b.caption and np.array_equal(a.frames, b.frames)
    c = ClipGenerator(seed=4).clip(7)
    assert c.caption != a.caption or not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_requested_shape(kind):
    clip = ClipGenerator(seed=1, num_frames=17, size=64).clip(0, kind=kind)
    assert clip.frames.shape == (17, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.kind == kind
    if kind != "stays":  # everything else changes over time
        assert not np.array_equal(clip.frames[0], clip.frames[-1])


def test_training_captions_avoid_held_out_triples():
    gen = ClipGenerator(seed=0)
    for i in range(400):
        for obj in gen.clip(i).objects:
            assert (obj.colour, obj.shape, obj.direction) not in HELD_OUT_TRIPLES


def test_tokenizer_covers_every_caption():
    tok = build_tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    gen = ClipGenerator(seed=0)
    for i in range(200):
        assert unk not in tok(gen.clip(i).caption).input_ids
    assert set(" ".join(held_out_prompts()).split()) <= set(VOCABULARY)


def test_tracker_agrees_with_real_clips_and_rejects_wrong_captions():
    gen = ClipGenerator(seed=5, held_out=True)
    for i in range(12):
        clip = gen.clip(i, kind="moves")
        assert check(clip.frames, clip.caption) == (True, True)
        obj = clip.objects[0]
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[obj.direction]
        wrong_colour = "white" if obj.colour != "white" else "red"
        assert check(clip.frames, f"a {obj.colour} {obj.shape} moves {opposite}")[1] is False
        assert check(clip.frames, f"a {wrong_colour} {obj.shape} moves {obj.direction}")[0] is False
