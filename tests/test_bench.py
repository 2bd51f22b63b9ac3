"""`motioncache bench --quick` end to end: result structure and finite numbers (not their size)."""

import json
import math
import os
import subprocess
import sys

import pytest


def run_quick(tmp_path, suite: str, *args: str, env: dict | None = None):
    """`motioncache bench SUITE --quick ARGS --out tmp_path`: it succeeds and writes its JSON and
    plot; returns the process result and the parsed JSON."""
    res = subprocess.run(
        [sys.executable, "-m", "motioncache_vllm.cli", "bench", suite, "--quick", *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / f"{suite}.png").stat().st_size > 0
    return res, json.loads((tmp_path / f"{suite}.json").read_text())


def test_pareto_quick_writes_table_json_and_plot(tmp_path):
    res, data = run_quick(tmp_path, "pareto", "--frames", "9", "--steps", "6")
    policies = {p["policy"] for p in data["points"]}
    assert {"vanilla", "none", "teacache", "flowcache", "motion", "magcache"} <= policies
    assert {"diffusers:first_block_cache", "diffusers:taylorseer", "diffusers:pab", "diffusers:magcache"} <= policies
    assert "cache-dit:dbcache" in policies  # cache-dit is a test dependency
    for p in data["points"]:
        assert {"policy", "knob", "value", "speedup", "psnr_db", "ssim"} <= set(p)
        assert math.isfinite(p["speedup"]) and p["speedup"] > 0
        assert math.isfinite(p["psnr_db"]) and 0 <= p["ssim"] <= 1.0001
    assert "| policy |" in res.stdout


def test_overhead_quick_splits_a_step_and_plots_it(tmp_path):
    _, data = run_quick(tmp_path, "overhead", "--frames", "9", "--steps", "10")
    (row,) = data["rows"]
    for key in ("policy_share", "pool_share", "scatter_share", "skipped_call_share"):
        assert math.isfinite(row[key]) and row[key] >= 0
    # a skipped call contains the bookkeeping, so it cannot cost less than it
    assert row["skipped_call_share"] > 0 and row["ideal_speedup"] >= 1


def test_cfg_quick_per_branch_vs_shared_with_and_without_guidance(tmp_path):
    _, data = run_quick(tmp_path, "cfg", "--frames", "9", "--steps", "6")
    policies = {p["policy"] for p in data["points"]}
    assert {
        "vanilla g=5",
        "motion/per_branch g=5",
        "motion/shared g=5",
        "vanilla g=1",
        "motion/per_branch g=1",
    } <= policies
    for p in data["points"]:
        assert p["extra"]["guidance"] in (5.0, 1.0)
        assert math.isfinite(p["speedup"]) and p["speedup"] > 0 and math.isfinite(p["psnr_db"])


def test_unknown_suite_is_a_usage_error():
    res = subprocess.run(
        [sys.executable, "-m", "motioncache_vllm.cli", "bench", "nope"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and "valid: pareto, overhead, memory, granularity, cuts, long" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "motioncache_vllm.cli", "bench", "throughput", "--policies", "none,nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "--policies: unknown nope; valid:" in res.stderr, res.stderr


def test_the_cli_knows_every_registered_suite_by_name():
    """The CLI refuses a suite name from a torch-free list; it must be the registry's."""
    import motioncache_vllm.fleet.bench  # noqa: F401  (registers "fleet")
    from motioncache_vllm.bench import SUITE_NAMES
    from motioncache_vllm.bench.suites import SUITES

    assert tuple(SUITES) == SUITE_NAMES


@pytest.mark.slow
def test_throughput_quick_through_vllm(tmp_path):
    """The vLLM throughput suite, quick: a real `motioncache serve`, 1 and 2 concurrent requests.
    One policy, ``motion`` (named per request; the server's default is ``none``): two policies
    made this the suite's slowest test."""
    pytest.importorskip("vllm")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # the vLLM model folder goes here
    res, data = run_quick(tmp_path, "throughput", "--policies", "motion", env=env)
    levels = {(r["policy"], r["concurrency"]) for r in data["rows"]}
    assert levels == {("motion", n) for n in (1, 2)}
    for r in data["rows"]:
        for key in (
            "videos_per_min",
            "latency_median_s",
            "latency_max_s",
            "sequential_videos_per_min",
            "concurrent_over_sequential",
            "sequential_units_s",
            "concurrent_units_s",
            "units_ratio",
        ):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        # the worker's transformer work is part of what the clients waited for (the sum of the latencies)
        assert r["sequential_units_s"] <= 1.01 * 60 * r["concurrency"] / r["sequential_videos_per_min"], r
    assert {o["policy"] for o in data["overhead"]} == {"motion"}
    for o in data["overhead"]:
        for key in (
            "vllm_latency_s",
            "vllm_worker_wall_s",
            "library_wall_s",
            "vllm_over_library",
            "vllm_over_generate",
        ):
            assert math.isfinite(o[key]) and o[key] > 0, (key, o)
    assert data["settings"]["torch_threads"] >= 1 and data["settings"]["frames"] == 9
    assert "| policy | concurrency |" in res.stdout


def test_oracle_quick_writes_table_json_and_plot(tmp_path):
    # a shipped model by name, the caches compared (--policies) and the seed (--seed) are honoured
    args = ("--model", "embedded-textured", "--policies", "magcache", "--seed", "5")
    res, data = run_quick(tmp_path, "oracle", "--frames", "9", "--steps", "6", *args)
    variants = {p["variant"] for p in data["points"]}
    assert {
        "oracle:step",
        "oracle:block/stale",
        "oracle:block/fresh",
        "oracle:step-dt",
        "oracle:block-dt/stale",
        "magcache",
    } == variants
    assert data["settings"]["seed"] == 5
    for p in data["points"]:
        assert math.isfinite(p["psnr_db"]) and p["ideal_speedup"] >= 1
    assert set(data["proxies"]) >= {"previous_change", "motion", "top30_share_median"}
    assert "| variant |" in res.stdout
