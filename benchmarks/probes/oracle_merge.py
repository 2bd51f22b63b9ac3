"""Merge oracle runs made one prompt per invocation (each under 10 min of the shared lock)
into one study: ``python benchmarks/probes/oracle_merge.py OUT.json IN1.json IN2.json ...``
writes OUT.json, OUT's plot (.png) and prints the table (``bench/oracle.py``'s)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from motioncache_vllm.bench.oracle import merge_results, oracle_table, plot_oracle


def main(out: str, *inputs: str) -> None:
    merged = merge_results([json.loads(Path(p).read_text()) for p in inputs])
    merged["sources"] = list(inputs)
    Path(out).write_text(json.dumps(merged, indent=2) + "\n")
    plot_oracle(merged, Path(out).with_suffix(".png"))
    print(oracle_table(merged))


if __name__ == "__main__":
    main(*sys.argv[1:])
