import numpy as np
import pytest

from motioncache_vllm.data.procedural import (
    HELD_OUT_TRIPLES,
    KINDS,
    TEXTURED_KINDS,
    VOCABULARY,
    ClipGenerator,
    held_out_prompts,
)
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


# -- the textured mix (issue 11, point 3) -------------------------------------------------


def test_textured_mix_is_deterministic_and_draws_the_new_kinds():
    a, b = ClipGenerator(seed=2, mix="textured"), ClipGenerator(seed=2, mix="textured")
    kinds = set()
    for i in range(60):
        x, y = a.clip(i), b.clip(i)
        assert x.caption == y.caption and x.distractors == y.distractors and np.array_equal(x.frames, y.frames)
        kinds.add(x.kind)
    assert set(TEXTURED_KINDS) <= kinds and "moves" in kinds  # new kinds mixed with the old ones
    # the flat mix (the shipped model's stream) never draws them
    assert not set(TEXTURED_KINDS) & {ClipGenerator(seed=2).clip(i).kind for i in range(60)}
    with pytest.raises(ValueError, match="unknown mix"):
        ClipGenerator(mix="wavy")


def test_textured_captions_avoid_held_out_triples_and_stay_in_the_vocabulary():
    tok = build_tokenizer()
    unk = tok.convert_tokens_to_ids("<unk>")
    gen = ClipGenerator(seed=0, num_frames=5, mix="textured")
    for i in range(300):
        clip = gen.clip(i, kind=TEXTURED_KINDS[i % 2])
        for obj in clip.objects + clip.distractors:
            assert (obj.colour, obj.shape, obj.direction) not in HELD_OUT_TRIPLES
        assert unk not in tok(clip.caption).input_ids
        assert all(d.colour != clip.objects[0].colour for d in clip.distractors)


def _object_mask(clip, frame):
    """Pixels some object covers in one frame (a palette colour), grown by 2 px for soft edges."""
    from motioncache_vllm.data.tracker import colour_masks

    mask = colour_masks(clip.frames[frame : frame + 1])[0] >= 0
    grown = mask.copy()
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            grown |= np.roll(mask, (dy, dx), axis=(0, 1))
    return grown


def test_textured_background_is_static_textured_and_objects_move():
    gen = ClipGenerator(seed=4, num_frames=17, mix="textured")
    several = agree = 0
    for i in range(20):
        clip = gen.clip(i, kind="textured")
        covered = np.zeros(clip.frames.shape[1:3], bool)
        for f in range(clip.frames.shape[0]):
            covered |= _object_mask(clip, f)
        free = ~covered  # background pixels in every frame
        assert free.mean() > 0.3
        bg = clip.frames[:, free].astype(int)
        assert np.abs(bg - bg[0]).max() == 0  # static: the texture never changes where no object is
        assert bg[0].std(axis=0).max() > 4  # and it is a texture, not a flat colour
        # the captioned object is the largest coloured thing and moves as captioned (the tracker
        # agrees), except where a distractor in front of it hides too much of it
        agree += check(clip.frames, clip.caption) == (True, True)
        several += len(clip.distractors) > 0
    assert agree >= 18
    assert several >= 10  # most clips have independently moving distractors


def test_distractors_move_independently_of_the_captioned_object():
    gen = ClipGenerator(seed=6, num_frames=17, mix="textured")
    independent = 0
    for i in range(20):
        clip = gen.clip(i, kind="textured")
        for d in clip.distractors:
            # the tracker follows the distractor's own colour along its own direction
            moved = check(clip.frames, f"a {d.colour} {d.shape} moves {d.direction}")[1]
            independent += moved and d.direction != clip.objects[0].direction
    assert independent >= 5


def test_textured_pan_scrolls_the_texture():
    clip = ClipGenerator(seed=8, num_frames=17, mix="textured").clip(0, kind="pans_textured")
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[clip.objects[0].direction]
    a, b = clip.frames[0].astype(int), clip.frames[-1].astype(int)
    assert np.abs(a - b).mean() > 2  # the whole picture changes
    # a camera moving by (dx, dy) * 0.7 px/frame * 16 frames ~ 11 px: frame 16 ~ frame 0 shifted back
    shift = np.roll(a, (-11 * dy, -11 * dx), axis=(0, 1))
    inner = (slice(14, -14), slice(14, -14))
    assert np.abs(shift[inner] - b[inner]).mean() < np.abs(a[inner] - b[inner]).mean() / 2
