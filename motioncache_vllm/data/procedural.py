"""Seeded procedural video clips with captions: the embedded model's training data.

Every clip is a pure function of ``(seed, index)``: shapes of several colours and kinds
that move, bounce, accelerate, sit still, get occluded, a camera that pans over a
textured background, and hard scene cuts. Captions come from a small closed vocabulary
(:data:`VOCABULARY`) so that a word-level tokenizer covers every caption exactly.

Held-out combinations (:data:`HELD_OUT_TRIPLES`) of colour, shape and direction never
appear in training captions; the quality gate generates from them.

Two mixes: ``"flat"`` (the shipped model's data: flat backgrounds, one captioned object)
and ``"textured"`` (issue 11, point 3), which adds :data:`TEXTURED_KINDS`: a captioned
object over a textured *static* background (stripes, checker or smooth noise) with up to
two smaller uncaptioned distractors that move independently and pass in front of or
behind it, and camera pans over such a texture. The texture and the distractors have no
caption words: new words would change the word-level tokenizer and the text encoder's
embedding table, i.e. the shipped model's architecture; captions stay those of the old
kinds (``"a C S moves D SPEED"``, ``"camera pans D over a C S"``).
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
TEXTURED_KINDS = ("textured", "pans_textured")
TEXTURES = ("stripes", "checker", "noise")
# kind probabilities per mix; "flat" is the shipped model's stream (unchanged)
MIXES: dict[str, dict[str, float]] = {
    "flat": dict(zip(KINDS, (0.4, 0.12, 0.1, 0.1, 0.1, 0.1, 0.08))),
    "textured": {
        **dict(zip(KINDS, (0.16, 0.05, 0.04, 0.05, 0.04, 0.04, 0.04))),
        "textured": 0.46,
        "pans_textured": 0.12,
    },
}

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
    objects: tuple[ObjectSpec, ...]  # the captioned ones
    distractors: tuple[ObjectSpec, ...] = ()  # uncaptioned moving objects (textured mix)


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
        mix: ``"flat"`` (the shipped model's data) or ``"textured"`` (see module docstring).
    """

    def __init__(
        self, seed: int = 0, num_frames: int = 33, size: int = 64, held_out: bool = False, mix: str = "flat"
    ) -> None:
        if num_frames < 1 or size < 16:
            raise ValueError("num_frames must be >= 1 and size >= 16")
        if mix not in MIXES:
            raise ValueError(f"unknown mix {mix!r}; valid: {', '.join(MIXES)}")
        self.seed, self.num_frames, self.size, self.held_out, self.mix = seed, num_frames, size, held_out, mix
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
            mix = MIXES[self.mix]
            kind = str(rng.choice(list(mix), p=list(mix.values())))
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

    # -- textured mix (issue 11, point 3) ------------------------------------------------
    def _texture_fn(self, rng: np.random.Generator):
        """A seeded static texture: ``f(x, y) -> (..., 3)`` colours, defined on the whole
        plane (pans sample it at shifted coordinates). Low-frequency (periods >= 12 px at
        64 px) and low-contrast, grey around a background colour: the fixed linear latent
        (4x4 px cells) represents it, and the gate's tracker never mistakes it for an object."""
        kind = str(rng.choice(TEXTURES))
        base = np.array(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], np.float32)
        amplitude = float(rng.uniform(22.0, 40.0))
        tint = rng.uniform(0.8, 1.0, size=3).astype(np.float32)  # near-grey: far from every palette colour
        scale = self.size / 64.0
        if kind == "stripes":
            theta = float(rng.uniform(0, np.pi))
            period = float(rng.uniform(12.0, 24.0)) * scale
            ux, uy = np.cos(theta), np.sin(theta)

            def pattern(x, y):
                return 0.5 + 0.5 * np.sin(2 * np.pi * (x * ux + y * uy) / period)

        elif kind == "checker":
            cell = float(rng.uniform(8.0, 16.0)) * scale

            def pattern(x, y):
                return (np.floor(x / cell) + np.floor(y / cell)) % 2

        else:  # smooth value noise: bilinear interpolation of a periodic random grid
            cell = float(rng.uniform(10.0, 18.0)) * scale
            grid = rng.random((8, 8)).astype(np.float32)

            def pattern(x, y):
                gx, gy = x / cell, y / cell
                x0, y0 = np.floor(gx), np.floor(gy)
                fx, fy = gx - x0, gy - y0
                fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)  # smoothstep
                i0, j0 = x0.astype(np.int64) % 8, y0.astype(np.int64) % 8
                i1, j1 = (i0 + 1) % 8, (j0 + 1) % 8
                top = grid[j0, i0] * (1 - fx) + grid[j0, i1] * fx
                bottom = grid[j1, i0] * (1 - fx) + grid[j1, i1] * fx
                return top * (1 - fy) + bottom * fy

        def texture(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return base + (amplitude * pattern(x, y))[..., None].astype(np.float32) * tint

        return texture

    def _distractors(self, rng: np.random.Generator, main: ObjectSpec) -> list[ObjectSpec]:
        """0-2 uncaptioned objects of other colours than the captioned one (never a held-out triple)."""
        out: list[ObjectSpec] = []
        for _ in range(int(rng.choice(3, p=[0.2, 0.45, 0.35]))):
            obj = self._object(rng, held_out=False)
            while obj.colour == main.colour:
                obj = self._object(rng, held_out=False)
            out.append(obj)
        return out

    def _render_textured(self, rng: np.random.Generator) -> Clip:
        """A captioned object moving over a static texture; distractors (smaller, so the
        captioned object stays the largest coloured thing) move on their own paths and
        pass in front of or behind it (occlusion)."""
        obj = self._object(rng)
        texture = self._texture_fn(rng)
        background = texture(self._xx, self._yy)
        frames = np.broadcast_to(background, (self.num_frames, self.size, self.size, 3)).copy()
        main_radius = self._radius(rng)
        layers = [(obj, self._trajectory(rng, obj, self.num_frames), main_radius, 0)]
        for k, extra in enumerate(self._distractors(rng, obj), start=1):
            path = self._trajectory(rng, extra, self.num_frames, bounce=bool(rng.random() < 0.3))
            radius = float(rng.uniform(0.45, 0.6)) * main_radius  # smaller than any captioned shape
            depth = k if rng.random() < 0.5 else -k  # negative: painted first, i.e. behind the captioned object
            layers.append((extra, path, radius, depth))
        layers.sort(key=lambda layer: layer[3])
        for f in range(self.num_frames):
            for spec, path, radius, _ in layers:
                self._paint(frames[f], spec, float(path[f, 0]), float(path[f, 1]), radius)
        caption = f"a {obj.colour} {obj.shape} moves {obj.direction} {obj.speed}"
        extras = tuple(spec for spec, _, _, depth in layers if depth != 0)
        return Clip(_to_uint8(frames), caption, "textured", (obj,), extras)

    def _render_pans_textured(self, rng: np.random.Generator) -> Clip:
        """Camera pans over a textured world (the object fixed in it): as ``pans``, other texture."""
        obj = self._object(rng)
        s, n = self.size, self.num_frames
        dx, dy = DIRECTIONS[obj.direction]
        v = SPEEDS["slowly"] * s / 64.0
        texture = self._texture_fn(rng)
        wx, wy = rng.uniform(0.3, 0.7, size=2) * s
        r = self._radius(rng)
        frames = np.empty((n, s, s, 3), np.float32)
        for f in range(n):
            ox, oy = dx * v * f, dy * v * f
            frames[f] = texture(self._xx + ox, self._yy + oy)
            self._paint(frames[f], obj, wx - ox, wy - oy, r)
        caption = f"camera pans {obj.direction} over a {obj.colour} {obj.shape}"
        return Clip(_to_uint8(frames), caption, "pans_textured", (obj,))


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def held_out_prompts() -> list[str]:
    """The quality gate's prompts: one "moves" caption per held-out triple and speed."""
    return [f"a {c} {s} moves {d} {v}" for (c, s, d), v in itertools.product(HELD_OUT_TRIPLES, SPEEDS)]
