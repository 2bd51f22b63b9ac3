"""Issue 11's comparison for ``steperror`` on one caption set, one model, one seed, in
resumable pieces (each a short ``oracle_piece.py`` run; a piece already on disk is skipped).

``python benchmarks/probes/steperror_eval.py PROMPTS MODEL SEED OUTDIR [PART ...]``

For every caption of the PROMPTS file (one a line) that is not a cut ("... then cut to ..."),
17 frames, 20 steps, CFG at the model's default, reference = chunked full compute of the
seed, the PARTs (default: all three, in this order):

- ``policy``: ``steperror`` at its thresholds (``POLICY`` below); ``policy:KEY=VALUE[:...]``
  the same with those settings (e.g. ``policy:schedule=magcache``; file ``..._policy-KEY=VALUE``);
- ``caches``: teacache and magcache at session 7's settings (``CACHES``);
- ``oracles``: the output-error step and block oracles (``ORACLES``; ~2-3 min per caption).

Files: ``OUTDIR/SET_MODEL_cI_sSEED_PART.json`` (SET = the PROMPTS file's stem, I = the
caption's line in it). Run it again
(e.g. in a loop with ``timeout 590``) until it prints ``done``; then
``python benchmarks/probes/steperror_verdict.py OUT.json OUTDIR/*.json``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

POLICY = ",".join(f"steperror:{t}" for t in (0.01, 0.02, 0.03, 0.06, 0.1, 0.2, 0.3, 1.0, 2.0))
CACHES = (
    "teacache:0.1,teacache:0.3,teacache:0.6,teacache:1.0:warmup_steps=3,"
    "magcache:0.24,magcache:0.5:max_skip_steps=8,magcache:1.0:max_skip_steps=16:retention_ratio=0.15"
)
ORACLES = "stepdt:0.01,stepdt:0.03,stepdt:0.1,stepdt:0.3,staledt:0.01,staledt:0.03,staledt:0.1,staledt:0.3"
PARTS = {"policy": POLICY, "caches": CACHES, "oracles": ORACLES}


def captions(prompts: str) -> list[tuple[int, str]]:
    lines = [line.strip() for line in Path(prompts).read_text().splitlines()]
    return [(i, c) for i, c in enumerate(lines) if c and " cut to " not in c]


def main(prompts: str, model: str, seed: str, outdir: str, *parts: str) -> None:
    unknown = [p for p in parts if p.split(":")[0] not in PARTS]
    if unknown:
        sys.exit(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    spec = importlib.util.spec_from_file_location("oracle_piece", Path(__file__).with_name("oracle_piece.py"))
    piece = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(piece)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for i, caption in captions(prompts):
        for part in parts or tuple(PARTS):
            name, *settings = part.split(":")
            path = out / f"{Path(prompts).stem}_{model}_c{i}_s{seed}_{'-'.join([name, *settings])}.json"
            if path.exists():
                continue
            variants = ",".join(":".join([v, *settings]) for v in PARTS[name].split(","))
            t0 = time.perf_counter()
            piece.main(model, caption, seed, "17", "20", variants, str(path))
            print(f"{path}: {time.perf_counter() - t0:.0f} s", flush=True)
    print("done")


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
