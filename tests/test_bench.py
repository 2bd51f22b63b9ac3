"""`motioncache bench --quick` end to end: result structure and finite numbers (not their size)."""

import json
import math
import subprocess
import sys


def test_pareto_quick_writes_table_json_and_plot(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "motioncache_vllm.cli", "bench", "pareto", "--quick", "--steps", "6",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert (tmp_path / "pareto.png").stat().st_size > 0
    policies = {p["policy"] for p in data["points"]}
    assert {"vanilla", "none", "teacache", "flowcache", "motion"} <= policies
    assert any(p.startswith("diffusers:") for p in policies)
    for p in data["points"]:
        assert {"policy", "knob", "value", "speedup", "psnr_db", "ssim"} <= set(p)
        assert math.isfinite(p["speedup"]) and p["speedup"] > 0
        assert math.isfinite(p["psnr_db"]) and 0 <= p["ssim"] <= 1.0001
    assert "| policy |" in res.stdout


def test_unknown_suite_is_a_usage_error():
    res = subprocess.run([sys.executable, "-m", "motioncache_vllm.cli", "bench", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "valid: pareto, overhead, memory, granularity, cuts, long" in res.stderr
