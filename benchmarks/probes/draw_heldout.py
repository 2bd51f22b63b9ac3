"""Draw held-out caption set N without showing it (sets 14 on; earlier sets came from an
uncommitted script of the same kind): six captions of the kinds of ``bench/prompts.py`` (slow,
fast, slow, fast, a pan, a bounce; cuts have their own suite), colour / shape / direction drawn
by ``random.Random(20261201 + N)``, none in an earlier set or in the bench's own captions.

    python benchmarks/probes/draw_heldout.py N   # writes benchmarks/prompts_unseenN.txt
"""

import random, sys
from pathlib import Path
from motioncache_vllm.data.procedural import COLOURS, SHAPES, DIRECTIONS
from motioncache_vllm.bench.prompts import held_out_set

n = int(sys.argv[1])
seen = set(held_out_set())
for p in Path("benchmarks").glob("prompts_unseen*.txt"):
    seen |= {line.strip() for line in p.read_text().splitlines() if line.strip()}
rng = random.Random(20261201 + n)
kinds = ["slow", "fast", "slow", "fast", "pan", "bounce"]
out = []
while len(out) < 6:
    c, s, d = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(DIRECTIONS))
    k = kinds[len(out)]
    cap = {
        "slow": f"a {c} {s} moves {d} slowly",
        "fast": f"a {c} {s} moves {d} quickly",
        "pan": f"camera pans {d} over a {c} {s}",
        "bounce": f"a {c} {s} bounces {d}",
    }[k]
    if cap not in seen and cap not in out:
        out.append(cap)
Path(f"benchmarks/prompts_unseen{n}.txt").write_text("\n".join(out) + "\n")
print(f"wrote {len(out)} captions to benchmarks/prompts_unseen{n}.txt (not shown)")
