"""Probe (benchmarks/RESULTS.md, MagCache section): the magcache policy vs flowcache and motion
on the chunked runtime, one run. Writes magcache_chunked.json/.png here. Run: python benchmarks/probes/magcache_chunked.py"""

import json, torch
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.bench import suites
from motioncache_vllm.bench.prompts import held_out_set

torch.set_num_threads(2)
pipe = load_pipeline()
s = suites.BenchSettings(prompts=held_out_set(), frames=33, repeats=1)
cands = [suites._cache_candidate(pipe, "none", "-", None)]
cands += [suites._cache_candidate(pipe, "flowcache", "threshold", t) for t in (0.1, 0.2, 0.3)]
cands += [suites._cache_candidate(pipe, "motion", "threshold", t) for t in (0.1, 0.2, 0.3)]
cands += [suites._cache_candidate(pipe, "magcache", "threshold", t) for t in (0.03, 0.06, 0.12, 0.24)]
points = suites.measure(pipe, cands, s, progress=lambda: None)
res = suites._points_result("magcache", points, s, False, __import__("pathlib").Path("."))
json.dump(res, open("magcache_chunked.json", "w"), indent=1)
print(suites.to_table(res))
