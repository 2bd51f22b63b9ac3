"""The real ``motioncache`` command in a subprocess, as a user runs it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from motioncache_vllm.video_io import read_video

REPORT_KEYS = {"model", "prompt", "seed", "frames", "height", "width", "steps", "policy", "wall_s"}


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "motioncache_vllm.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_generate_happy_path_with_compare(tmp_path):
    out, report = tmp_path / "v.mp4", tmp_path / "r.json"
    res = run_cli(
        "generate",
        "--prompt",
        "a red circle moves right",
        "--frames",
        "17",
        "--steps",
        "3",
        "--out",
        str(out),
        "--report",
        str(report),
        "--compare",
    )
    assert res.returncode == 0, res.stderr
    assert read_video(out).shape == (17, 64, 64, 3)
    data = json.loads(report.read_text())
    assert REPORT_KEYS | {"baseline_wall_s", "speedup", "psnr_db", "ssim"} <= set(data)
    assert data["frames"] == 17 and data["policy"] == "none" and data["steps"] == 3
    # chunked none vs the stock loop: the same computation up to float reassociation
    assert data["psnr_db"] >= 60 and data["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert data["token_steps_computed"] == data["token_steps_total"] and data["ideal_speedup"] == 1.0
    assert data["cfg_batched"] is True  # the default


def test_gif_output_and_the_cfg_batched_switch(tmp_path):
    out, report = tmp_path / "v.gif", tmp_path / "r.json"
    args = ["-p", "a green square moves up", "--frames", "17", "--steps", "2", "--out", str(out), "-q"]
    res = run_cli("generate", *args, "--no-cfg-batched", "--report", str(report))
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # --quiet
    assert read_video(out).shape[0] == 17
    assert json.loads(report.read_text())["cfg_batched"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--frames", "0"], "--frames must be a positive integer"),
        (["--frames", "-5"], "--frames must be a positive integer"),
        (["--frames", "32"], "4k+1"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--height", "60"], "--height must be a positive multiple of 8 for this model (e.g. 56 or 64), got 60"),
        (["--width", "100"], "--width must be a positive multiple of 8"),
        (["--height", "4"], "--height must be a positive multiple of 8"),
        (["--prompt", "   "], "--prompt must not be blank"),
        (["--guidance", "nan"], "--guidance must be a finite number"),
        (["--pool-mib", "nan"], "--pool-mib"),
        # refused from the folder's JSON, before the weights are loaded
        (["--frames", "1025", "--height", "2048", "--width", "2048"], "over the memory limit"),
        (
            ["--cache-policy", "nope"],
            "valid policies: flowcache, magcache, magrefresh, motion, none, steperror, teacache, tokenrate",
        ),
        (["--cache-policy", "motion", "--policy-config", "bogus=1"], "unknown field `bogus`"),
        (["--cache-policy", "motion", "--policy-config", "alpha"], "key=value"),
        (["--tile", "3"], "must divide the token grid"),
        (["--model", "/definitely/not/here"], "not a diffusers pipeline folder"),
        (["--out", "/definitely/not/here/v.mp4"], "does not exist"),
        (["--out", "/proc/v.mp4"], "cannot write"),
        (["--out", "v.avi"], "unsupported format"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--pool-dtype", "int3"], "unknown --pool-dtype 'int3'"),
        (["--cfg-delta-dtype", "int4"], "--cfg-delta-dtype needs --cfg-shared"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    argv = ["generate", "--prompt", "a red circle moves right", "--steps", "1", *args]
    if "--out" not in args:
        argv += ["--out", str(tmp_path / "v.mp4")]
    res = run_cli(*argv, cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_motion_policy_report_and_recompute_map(tmp_path):
    out, report, heat = tmp_path / "v.mp4", tmp_path / "r.json", tmp_path / "map.mp4"
    res = run_cli(
        "generate",
        "-p",
        "a red circle moves right",
        "--frames",
        "17",
        "--steps",
        "8",
        "--cache-policy",
        "motion",
        "--policy-config",
        "threshold=2.0",
        "--pool-mib",
        "1",
        "--out",
        str(out),
        "--report",
        str(report),
        "--recompute-map",
        str(heat),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(report.read_text())
    for key in ("token_steps_total", "token_steps_computed", "ideal_speedup", "pool_peak_bytes", "evictions"):
        assert key in data
    assert data["token_steps_computed"] < data["token_steps_total"] and data["ideal_speedup"] > 1
    assert data["pool_peak_bytes"] <= 2**20
    counts = np.array(data["recompute_counts"])  # latent frames x block rows x block cols
    assert counts.shape == (6, 8, 8) and counts.dtype.kind == "i"
    # a block spans its chunk's 3 latent frames, one count grid per chunk; counts of both CFG
    # branches: together they are the computed token-steps
    assert (counts[0::3] == counts[1::3]).all() and (counts[0::3] == counts[2::3]).all()
    assert int(counts[0::3].sum()) * 3 == data["token_steps_computed"]
    heat_video = read_video(heat)
    assert heat_video.shape == (17, 64, 128, 3)  # generated frame | heat map


def test_steperror_refresh_report_has_a_recompute_map_that_is_not_flat(tmp_path):
    """The spatial part of ``steperror`` (refreshes at skipped steps) ranks blocks: the report's
    per-block counts differ inside a chunk, where the whole-step rule's are all equal."""
    report = tmp_path / "r.json"
    common = ["-p", "a red circle moves right", "--frames", "17", "--steps", "8", "--cache-policy", "steperror"]
    res = run_cli(
        "generate",
        *common,
        "--policy-config",
        "threshold=1.0",
        "--policy-config",
        "refresh_fraction=0.25",
        "--out",
        str(tmp_path / "v.mp4"),
        "--report",
        str(report),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(report.read_text())
    counts = np.array(data["recompute_counts"])  # latent frames x block rows x block cols
    assert data["partial_steps"] > 0 and data["ideal_speedup"] > 1
    assert int(counts[0].max()) > int(counts[0].min())  # some blocks recomputed more often
    assert int(counts[0::3].sum()) * 3 == data["token_steps_computed"]


def test_other_commands_refuse_mistakes_before_loading_torch():
    """bench, calibrate and gate refuse a mistyped suite, model or schedule with one clear line
    and before torch and the model code load (that took 10-14 s per mistake)."""
    cases = [
        (["bench", "nope"], "unknown suite 'nope'"),
        (["bench", "pareto", "--model", "/definitely/not/here"], "not a diffusers pipeline folder"),
        (["calibrate", "--model", "/definitely/not/here"], "not a diffusers pipeline folder"),
        (["calibrate", "--steps", "1"], "--steps must list schedule lengths >= 2"),
        (["gate", "--model", "/definitely/not/here"], "not a diffusers pipeline folder"),
    ]
    script = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from motioncache_vllm.cli import app\n"
        f"for args in {[a for a, _ in cases]!r}:\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    print(json.dumps([r.exit_code, 'torch' in sys.modules, r.output]))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    results = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(results) == len(cases)
    for (args, message), (code, torch_loaded, output) in zip(cases, results):
        assert code == 2 and message in output, (args, output)
        assert "Traceback" not in output
        assert not torch_loaded, args


def test_policies_lists_each_policy_and_the_guard_once():
    res = run_cli("policies")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    from motioncache_vllm.policies import policy_names

    for name in policy_names():
        assert sum(line.startswith(f"{name}: ") for line in lines) == 1
    # the guard's settings are shared by every policy: one entry each, after the last policy
    for field in ("cut_threshold", "cut_grid", "cut_full_every", "cut_band_threshold", "cut_band_every"):
        assert sum(line.strip().startswith(f"{field} = ") for line in lines) == 1
    assert any(line.strip().startswith("refresh_fraction = 0.0:") for line in lines)  # steperror's
