"""Seeded procedural video clips with captions: the embedded model's training data.

Every clip is a pure function of ``(seed, index)``: shapes of several colours and kinds
that move, bounce, accelerate, sit still, get occluded, a camera that pans over a
textured background, and hard scene cuts. Captions come from a small closed vocabulary
(:data:`VOCABULARY`) so that a word-level tokenizer covers every caption exactly.

Held-out combinations (:data:`HELD_OUT_TRIPLES`) of colour, shape and direction never
appear in training captions; the quality gate generates from them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (240, 220, 40),
    "cyan": (40, 220, 230),
    "magenta": (220, 50, 220),
    "white": (245, 245, 245),
    "orange": (250, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in image coordinates
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
SPEEDS = {"slowly": 0.7, "quickly": 1.4}  # pixels per frame at 64 px
BACKGROUNDS = ((12, 12, 16), (40, 40, 44), (10, 20, 48))
KINDS = ("moves", "bounces", "accelerates", "stays", "pans", "cut", "behind")

# (colour, shape, direction) never used in training captions; every colour, shape and
# direction on its own is still seen. Chosen as a fixed Latin-square-like pattern.
HELD_OUT_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(
    (colour, SHAPES[i % 3], list(DIRECTIONS)[(i * 3 + 1) % 4]) for i, colour in enumerate(COLOURS)
)

_WORDS = (
    ["a", "moves", "bounces", "accelerates", "stays", "still", "camera", "pans", "over", "then", "cut", "to"]
    + ["behind", "bar", "static", "scene"]
    + list(COLOURS)
    + list(SHAPES)
    + list(DIRECTIONS)
    + list(SPEEDS)
)
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(_WORDS))


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str
    speed: str = "slowly"


@dataclass(frozen=True)
class Clip:
    """One procedural clip: ``frames`` is uint8 (F, H, W, 3)."""

    frames: np.ndarray
    caption: str
    kind: str
    objects: tuple[ObjectSpec, ...]


def _shape_alpha(shape: str, cx: float, cy: float, radius: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Soft coverage in [0, 1] of a shape centred at (cx, cy): sub-pixel motion stays smooth."""
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - radius
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - radius * 0.85
    else:  # upward triangle: intersection of three half-planes
        r = radius * 1.1
        n = np.array([[0.0, 1.0], [0.866, -0.5], [-0.866, -0.5]])
        # half-plane distances from the centre, inradius r/2
        d = np.stack([dx * nx + (-dy) * ny for nx, ny in n]) - r * 0.5
        sdf = d.max(axis=0)
    return np.clip(0.5 - sdf, 0.0, 1.0)


class ClipGenerator:
    """Deterministic generator: ``ClipGenerator(seed).clip(i)`` is always the same clip.

    Args:
        seed: base seed; clip ``i`` uses ``np.random.default_rng([seed, i])``.
        num_frames: frames per clip (4k+1 in the Wan convention).
        size: height = width in pixels.
        held_out: ``False`` excludes :data:`HELD_OUT_TRIPLES` from captions (training),
            ``True`` draws only held-out triples for single-object motion clips.
    """

    def __init__(self, seed: int = 0, num_frames: int = 33, size: int = 64, held_out: bool = False) -> None:
        if num_frames < 1 or size < 16:
            raise ValueError("num_frames must be >= 1 and size >= 16")
        self.seed, self.num_frames, self.size, self.held_out = seed, num_frames, size, held_out
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        self._yy, self._xx = yy, xx

    # -- sampling captions -------------------------------------------------------------
    def _object(self, rng: np.random.Generator, held_out: bool | None = None) -> ObjectSpec:
        held_out = self.held_out if held_out is None else held_out
        while True:
            triple = (
                str(rng.choice(list(COLOURS))),
                str(rng.choice(SHAPES)),
                str(rng.choice(list(DIRECTIONS))),
            )
            if (triple in HELD_OUT_TRIPLES) == held_out:
                return ObjectSpec(*triple, speed=str(rng.choice(list(SPEEDS))))

    def clip(self, index: int, kind: str | None = None) -> Clip:
        rng = np.random.default_rng([self.seed, index])
        if kind is None:
            # single-object motion dominates so that colour and direction are learned first
            kind = str(rng.choice(KINDS, p=[0.4, 0.12, 0.1, 0.1, 0.1, 0.1, 0.08]))
        render = getattr(self, f"_render_{kind}")
        return render(rng)

    # -- renderers ---------------------------------------------------------------------
    def _canvas(self, rng: np.random.Generator) -> np.ndarray:
        bg = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
        return np.broadcast_to(bg, (self.num_frames, self.size, self.size, 3)).copy()

    def _paint(self, frame: np.ndarray, obj: ObjectSpec, cx: float, cy: float, radius: float) -> None:
        alpha = _shape_alpha(obj.shape, cx, cy, radius, self._yy, self._xx)[..., None]
        frame *= 1.0 - alpha
        frame += alpha * np.array(COLOURS[obj.colour], np.float32)

    def _trajectory(
        self, rng: np.random.Generator, obj: ObjectSpec, n: int, accel: bool = False, bounce: bool = False
    ) -> np.ndarray:
        """Centre positions (n, 2) that keep the object on screen (except when bouncing)."""
        s, margin = self.size, self.size * 0.18
        dx, dy = DIRECTIONS[obj.direction]
        v = SPEEDS[obj.speed] * s / 64.0
        t = np.arange(n, dtype=np.float32)
        dist = 0.5 * (2.0 * v / max(n - 1, 1)) * t * t if accel else v * t
        travel = float(dist[-1])
        pos = np.empty((n, 2), np.float32)
        for axis, d in ((0, dx), (1, dy)):
            if d == 0.0:
                pos[:, axis] = rng.uniform(margin, s - margin)
            elif bounce:
                start = rng.uniform(margin, s - margin)
                lo, hi = margin, s - margin
                raw = start + d * dist - lo
                period = 2 * (hi - lo)
                m = np.mod(raw, period)
                pos[:, axis] = lo + np.where(m <= hi - lo, m, period - m)
            else:
                span = max(s - 2 * margin - travel, 0.0)
                start = margin + rng.uniform(0, span) if span > 0 else margin
                start = start if d > 0 else s - start
                pos[:, axis] = start + d * dist
        return pos

    def _radius(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(0.09, 0.14) * self.size)

    def _single(self, rng: np.random.Generator, kind: str, accel: bool = False, bounce: bool = False) -> Clip:
        obj = self._object(rng)
        frames = self._canvas(rng)
        r = self._radius(rng)
        for f, (cx, cy) in enumerate(self._trajectory(rng, obj, self.num_frames, accel, bounce)):
            self._paint(frames[f], obj, cx, cy, r)
        verb = {"moves": "moves", "bounces": "bounces", "accelerates": "accelerates"}[kind]
        speed = f" {obj.speed}" if kind == "moves" else ""
        caption = f"a {obj.colour} {obj.shape} {verb} {obj.direction}{speed}"
        return Clip(_to_uint8(frames), caption, kind, (obj,))

    def _render_moves(self, rng: np.random.Generator) -> Clip:
        return self._single(rng, "moves")

    def _render_bounces(self, rng: np.random.Generator) -> Clip:
        return self._single(rng, "bounces", bounce=True)

    def _render_accelerates(self, rng: np.random.Generator) -> Clip:
        return self._single(rng, "accelerates", accel=True)

    def _render_stays(self, rng: np.random.Generator) -> Clip:
        obj = self._object(rng)
        frames = self._canvas(rng)
        cx, cy = rng.uniform(0.25, 0.75, size=2) * self.size
        r = self._radius(rng)
        for f in range(self.num_frames):
            self._paint(frames[f], obj, cx, cy, r)
        if rng.random() < 0.3:  # the empty static scene
            return Clip(_to_uint8(self._canvas(rng)), "static scene", "stays", ())
        return Clip(_to_uint8(frames), f"a {obj.colour} {obj.shape} stays still", "stays", (obj,))

    def _render_pans(self, rng: np.random.Generator) -> Clip:
        """Camera pans: a striped world scrolls opposite to the pan direction."""
        obj = self._object(rng)
        s, n = self.size, self.num_frames
        dx, dy = DIRECTIONS[obj.direction]
        v = SPEEDS["slowly"] * s / 64.0
        period = s / 4
        base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
        stripe = base + 35.0
        wx, wy = rng.uniform(0.3, 0.7, size=2) * s  # object fixed in the world
        r = self._radius(rng)
        frames = np.empty((n, s, s, 3), np.float32)
        for f in range(n):
            ox, oy = dx * v * f, dy * v * f  # camera offset
            coord = (self._xx + ox) if dx != 0 else (self._yy + oy)
            on = (np.mod(coord, period) < period / 2)[..., None]
            frames[f] = np.where(on, stripe, base)
            self._paint(frames[f], obj, wx - ox, wy - oy, r)
        return Clip(_to_uint8(frames), f"camera pans {obj.direction} over a {obj.colour} {obj.shape}", "pans", (obj,))

    def _render_cut(self, rng: np.random.Generator) -> Clip:
        n = self.num_frames
        cut = int(rng.integers(n // 3, 2 * n // 3 + 1))
        first, second = self._object(rng), self._object(rng)
        frames = self._canvas(rng)
        frames[cut:] = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
        for obj, lo, hi in ((first, 0, cut), (second, cut, n)):
            r = self._radius(rng)
            for k, (cx, cy) in enumerate(self._trajectory(rng, obj, hi - lo)):
                self._paint(frames[lo + k], obj, cx, cy, r)
        caption = (
            f"a {first.colour} {first.shape} moves {first.direction} "
            f"then cut to a {second.colour} {second.shape} moves {second.direction}"
        )
        return Clip(_to_uint8(frames), caption, "cut", (first, second))

    def _render_behind(self, rng: np.random.Generator) -> Clip:
        """Occlusion: the object passes behind a grey bar across its path."""
        obj = self._object(rng)
        frames = self._canvas(rng)
        r = self._radius(rng)
        s = self.size
        dx, _ = DIRECTIONS[obj.direction]
        lo, hi = int(s * 0.42), int(s * 0.58)
        for f, (cx, cy) in enumerate(self._trajectory(rng, obj, self.num_frames)):
            self._paint(frames[f], obj, cx, cy, r)
            if dx != 0:
                frames[f, :, lo:hi] = 128.0
            else:
                frames[f, lo:hi, :] = 128.0
        caption = f"a {obj.colour} {obj.shape} moves {obj.direction} behind a bar"
        return Clip(_to_uint8(frames), caption, "behind", (obj,))


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def held_out_prompts() -> list[str]:
    """The quality gate's prompts: one "moves" caption per held-out triple and speed."""
    return [f"a {c} {s} moves {d} {v}" for (c, s, d), v in itertools.product(HELD_OUT_TRIPLES, SPEEDS)]
