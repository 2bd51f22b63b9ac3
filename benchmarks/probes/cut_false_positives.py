"""Where the scene-cut guard fires: chunks it flags on captions with and without a cut.

    python benchmarks/probes/cut_false_positives.py OUT.json 'JSON' FRAMES [BUDGET_S] PROMPTS_FILE...

JSON = list of [policy, policy_config]; PROMPTS_FILE: one caption a line, or ``bench`` for the
bench's held-out set (``bench/prompts.py``); seed = the caption's index in its file (as the
pareto/hybrid suites). Per (caption, candidate): the chunks flagged (``stats["scene_cuts"]``; in
the band below the threshold: ``scene_cut_band``),
each chunk's change (``stats["chunk_changes"]``, chunks 1, 2, ...: what the guard compares with
``cut_threshold``), ideal speedup. A one-scene caption's flags are false positives; where nothing
is flagged the guard changed no decision, so the run equals the run without it. Resumable:
results are written as they come, no new run starts after BUDGET_S seconds (default 480).
"""

import json
import sys
import time
from pathlib import Path

from motioncache_vllm.bench.prompts import held_out_set, load_prompts
from motioncache_vllm.config import CacheConfig, GenerationRequest
from motioncache_vllm.models.loading import load_pipeline
from motioncache_vllm.runtime.generate import generate_video

T0 = time.perf_counter()
out_path, candidates, frames = Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
budget = float(sys.argv[4])
files = sys.argv[5:]
results = json.loads(out_path.read_text()) if out_path.exists() else {"frames": frames, "runs": {}}
pipe = load_pipeline("embedded")
pipe.set_progress_bar_config(disable=True)
for path in files:
    prompts = held_out_set() if path == "bench" else load_prompts(path)
    for seed, prompt in enumerate(prompts):
        for policy, cfg in candidates:
            key = json.dumps([path, prompt, policy, cfg])
            if key in results["runs"]:
                continue
            if time.perf_counter() - T0 > budget:
                print("budget spent; run again to go on", flush=True)
                sys.exit(0)
            req = GenerationRequest(prompt=prompt, num_frames=frames, seed=seed)
            r = generate_video(pipe, req, cache=CacheConfig.decode(policy, cfg))
            results["runs"][key] = {
                "cut_caption": " cut " in prompt,
                "scene_cuts": r.stats["scene_cuts"],
                "scene_cut_band": r.stats.get("scene_cut_band", []),
                "chunk_changes": r.stats["chunk_changes"],  # chunks 1, 2, ...
                "ideal_speedup": r.stats["ideal_speedup"],
            }
            out_path.write_text(json.dumps(results, indent=1))
            print(key, results["runs"][key], flush=True)
print(f"done ({time.perf_counter() - T0:.0f} s)", flush=True)
