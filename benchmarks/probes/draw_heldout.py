"""Draw held-out caption set N without showing it (sets 14 on; earlier sets came from an
uncommitted script of the same kind): six captions of the kinds of ``bench/prompts.py`` (slow,
fast, slow, fast, a pan, a bounce; cuts have their own suite), colour / shape / direction drawn
by ``random.Random(20261201 + N)``, none in an earlier set (``prompts_unseen.txt`` counts as set
1) or in the bench's own captions. The draw depends only on sets before N, so it can be redone:
an existing file is never overwritten, only checked against the draw (captions still not shown).

    python benchmarks/probes/draw_heldout.py N   # writes benchmarks/prompts_unseenN.txt
"""

import argparse
import random
import re
import sys
from pathlib import Path

from motioncache_vllm.bench.prompts import caption, held_out_set, load_prompts
from motioncache_vllm.data.procedural import COLOURS, DIRECTIONS, SHAPES

KINDS = ("slow", "fast", "slow", "fast", "pan", "bounce")
SETS = Path("benchmarks")


def set_number(path: Path) -> int | None:
    match = re.fullmatch(r"prompts_unseen(\d*)\.txt", path.name)
    return None if match is None else int(match.group(1) or 1)


def draw(n: int) -> list[str]:
    seen = set(held_out_set())
    for path in SETS.glob("prompts_unseen*.txt"):
        number = set_number(path)
        if number is not None and number < n:
            seen |= set(load_prompts(path))
    rng = random.Random(20261201 + n)
    out: list[str] = []
    while len(out) < len(KINDS):
        c, s, d = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
        drawn = caption(KINDS[len(out)], c, s, d)
        if drawn not in seen and drawn not in out:
            out.append(drawn)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="the set's number (2 or more)")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("N must be 2 or more (set 1 is benchmarks/prompts_unseen.txt)")
    target = SETS / f"prompts_unseen{args.n}.txt"
    text = "\n".join(draw(args.n)) + "\n"
    if target.exists():
        same = target.read_text() == text
        sys.exit(f"{target} exists, not overwritten; it {'matches' if same else 'differs from'} the seeded draw")
    target.write_text(text)
    print(f"wrote {len(KINDS)} captions to {target} (not shown)")


if __name__ == "__main__":
    main()
