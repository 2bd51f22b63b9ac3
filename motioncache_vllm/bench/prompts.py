"""The held-out benchmark prompts: captions never used in training, covering static
scenes, slow and fast motion, camera pans and hard cuts."""

from __future__ import annotations

from pathlib import Path

from motioncache_vllm.data.procedural import HELD_OUT_TRIPLES


def caption(kind: str, colour: str, shape: str, direction: str) -> str:
    """A one-scene caption of one of the bench's kinds (what held-out caption sets are drawn as)."""
    return {
        "slow": f"a {colour} {shape} moves {direction} slowly",
        "fast": f"a {colour} {shape} moves {direction} quickly",
        "pan": f"camera pans {direction} over a {colour} {shape}",
        "bounce": f"a {colour} {shape} bounces {direction}",
    }[kind]


def held_out_set() -> list[str]:
    (c0, s0, d0), (c1, s1, d1), (c2, s2, d2), (c3, s3, d3) = HELD_OUT_TRIPLES[:4]
    return [
        "static scene",
        caption("slow", c0, s0, d0),
        caption("fast", c1, s1, d1),
        caption("pan", c2, s2, d2),
        f"a {c3} {s3} moves {d3} then cut to a {c0} {s0} moves {d0}",
        caption("bounce", c1, s1, d1),
    ]


def load_prompts(path: str | Path | None) -> list[str]:
    if path is None:
        return held_out_set()
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"prompts file {path} has no captions")
    return lines
