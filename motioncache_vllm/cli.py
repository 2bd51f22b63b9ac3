"""The ``motioncache`` command.

``motioncache generate`` turns a caption into a video on the embedded model (or a
diffusers SkyReels-V2 DF folder) and writes a JSON report. User mistakes exit with code
2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from motioncache_vllm.limits import ModelGeometry

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="MotionCache for autoregressive video diffusion.",
)


def _quiet_libraries() -> None:
    """Library chatter (load bars, deprecation notes) is noise on a CLI."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    warnings.filterwarnings("ignore", category=FutureWarning)
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


@app.callback()
def _root() -> None:
    """MotionCache for autoregressive video diffusion."""


class UsageError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2."""


def _lazy_pool_config():
    from motioncache_vllm.config import PoolConfig  # torch-free: cheap at import

    return PoolConfig


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _check_writable(path: Path, what: str) -> None:
    """Probe by creating (and removing) a file beside ``path``: ``os.access`` says yes
    for root even on read-only or virtual file systems."""
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: directory {parent} does not exist")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    probe = parent / f".{path.name}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write in {parent} ({exc.strerror or exc})") from None


def _struct_options(struct: type, prefix: str = ""):
    """Add one ``--<prefix><field>`` option per field of the msgspec ``struct`` to a typer
    command (help = the field's docstring, default = the field's); the command receives
    them as one dict ``<struct name>_options`` and decodes it once (``msgspec.convert``)."""
    import functools
    import inspect
    import typing

    import msgspec

    from motioncache_vllm.config import field_docs

    docs = field_docs(struct)
    hints = typing.get_type_hints(struct, include_extras=False)
    extra, names = [], []
    for f in msgspec.structs.fields(struct):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        choices = None
        if typing.get_origin(hint) is typing.Literal or (args and typing.get_origin(args[0]) is typing.Literal):
            choices = typing.get_args(hint if typing.get_origin(hint) is typing.Literal else args[0])
            hint = Optional[str] if type(None) in typing.get_args(hint) else str
        elif args and len(args) == 1 and type(None) in typing.get_args(hint):
            hint = Optional[args[0]]
        help_text = docs.get(f.name, "") + (f" One of: {', '.join(choices)}." if choices else "")
        flag = "--" + (prefix + f.name).replace("_", "-")
        if hint is bool:  # on/off pair: a field that defaults to True must be switchable off
            flag = f"{flag}/--no-{flag[2:]}"
        option = typer.Option(f.default, flag, help=help_text)
        extra.append(
            inspect.Parameter(prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint)
        )
        names.append(f.name)
    key = f"{struct.__name__.lower()}_options"

    def wrap(command):
        @functools.wraps(command)
        def run(**kwargs):
            kwargs[key] = {name: kwargs.pop(prefix + name) for name in names}
            return command(**kwargs)

        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != key]
        run.__signature__ = signature.replace(parameters=[*own, *extra])
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run

    return wrap


def _usage_error_of(exc: Exception, struct: type | None = None) -> UsageError:
    """A decode error of the settings as one CLI line: the fields of ``struct`` (whose
    fields are options) named as their options, other paths as bare field names."""
    import re
    import typing

    import msgspec

    text = str(exc)
    if struct is not None:
        hints = typing.get_type_hints(struct)

        def choices(name: str) -> str:
            args = [a for a in typing.get_args(hints[name]) if a is not type(None)]
            literal = hints[name] if typing.get_origin(hints[name]) is typing.Literal else (args or [None])[0]
            return ", ".join(typing.get_args(literal)) if typing.get_origin(literal) is typing.Literal else ""

        text = re.sub(
            r"Invalid enum value '([^']*)' - at `\$\.(\w+)`",
            lambda m: f"unknown --{m.group(2).replace('_', '-')} {m.group(1)!r}; valid: {choices(m.group(2))}",
            text,
        )
        for f in msgspec.structs.fields(struct):
            text = re.sub(rf"`\$\.{f.name}`|(?<![-\w]){f.name}\b", "--" + f.name.replace("_", "-"), text)
    return UsageError(re.sub(r"`\$\.(\w+)`", r"\1", text))


@app.command()
@_struct_options(_lazy_pool_config())
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="Caption of the video."),
    model: str = typer.Option(
        "embedded", help="'embedded', 'embedded-textured' or the path of a diffusers SkyReels-V2 DF folder."
    ),
    frames: Optional[int] = typer.Option(
        None, help="Frames, of the form 4k+1 (17, 33, 65, ...). Default: the model's."
    ),
    height: Optional[int] = typer.Option(None, help="Height in pixels. Default: the model's."),
    width: Optional[int] = typer.Option(None, help="Width in pixels. Default: the model's."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps per chunk. Default: the model's."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale. Default: the model's."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same video."),
    cache_policy: str = typer.Option(
        "none", help="Cache policy: none, teacache, flowcache, motion, magcache, tokenrate, magrefresh, steperror."
    ),
    policy_config: list[str] = typer.Option(
        [],
        "--policy-config",
        help="Policy setting key=value; repeat the flag for each setting, e.g. "
        "--policy-config threshold=0.03 --policy-config refresh_fraction=0.1; "
        "`motioncache policies` lists every policy's settings.",
    ),
    runtime: str = typer.Option("chunked", help="chunked (K/V of finished chunks reused) or vanilla (stock loop)."),
    recompute_map: Optional[Path] = typer.Option(None, help="Also write a heat-map video of recomputation."),
    compare: bool = typer.Option(
        False, help="Also run the stock pipeline (full compute) on the same seed: speedup, PSNR, SSIM."
    ),
    out: Path = typer.Option(Path("video.mp4"), help="Output video (.mp4 or .gif)."),
    report: Optional[Path] = typer.Option(None, help="Write a JSON report here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    poolconfig_options: dict = None,
) -> None:
    """Generate a video from a caption. Pool options (--tile ... --cfg-delta-dtype) are the
    fields of motioncache_vllm.config.PoolConfig."""
    try:
        options = GenerateOptions(
            prompt=prompt,
            model=model,
            frames=frames,
            height=height,
            width=width,
            steps=steps,
            guidance=guidance,
            seed=seed,
            cache_policy=cache_policy,
            policy_config=policy_config,
            runtime=runtime,
            recompute_map=recompute_map,
            compare=compare,
            out=out,
            report=report,
            quiet=quiet,
        )
        _generate(options, poolconfig_options)
    except UsageError as exc:
        _fail(str(exc))


@dataclass(frozen=True)
class GenerateOptions:
    """``motioncache generate``'s own options (the pool's come as a PoolConfig dict)."""

    prompt: str
    model: str
    frames: Optional[int]
    height: Optional[int]
    width: Optional[int]
    steps: Optional[int]
    guidance: Optional[float]
    seed: int
    cache_policy: str
    policy_config: list[str]
    runtime: str
    recompute_map: Optional[Path]
    compare: bool
    out: Path
    report: Optional[Path]
    quiet: bool


def _generate(o: GenerateOptions, pool_options: dict):
    import msgspec

    from motioncache_vllm.config import CacheConfig, ConfigError, GenerationReport, GenerationRequest, PoolConfig
    from motioncache_vllm.config import decode_policy, parse_overrides
    from motioncache_vllm.video_io import SUPPORTED_SUFFIXES

    prompt, frames, height, width, steps, guidance, seed = (
        o.prompt,
        o.frames,
        o.height,
        o.width,
        o.steps,
        o.guidance,
        o.seed,
    )
    runtime, recompute_map, out, report = o.runtime, o.recompute_map, o.out, o.report
    # -- validate everything before any expensive work --------------------------------
    import math

    for name, value in (("--frames", frames), ("--steps", steps), ("--height", height), ("--width", width)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be a positive integer, got {value}")
    if guidance is not None and not math.isfinite(guidance):
        raise UsageError(f"--guidance must be a finite number, got {guidance}")
    if guidance is not None and guidance < 0:
        raise UsageError(f"--guidance must be >= 0, got {guidance}")
    # decoded once: the policy's and the pool's Structs declare every limit
    try:
        policy = decode_policy(o.cache_policy, parse_overrides(o.policy_config))
    except ConfigError as exc:
        raise _usage_error_of(exc) from None
    try:
        cache = CacheConfig(policy=policy, pool=PoolConfig.decode(pool_options))
    except ConfigError as exc:
        raise _usage_error_of(exc, PoolConfig) from None
    geometry = _check_shape(o.model, prompt, frames, height, width, guidance, cache.pool.pool_mib)
    tile = cache.pool.tile
    grid = (
        (height or geometry.default_height) // geometry.spatial_factor,
        (width or geometry.default_width) // geometry.spatial_factor,
    )
    if runtime not in ("chunked", "vanilla"):
        raise UsageError(f"unknown --runtime {runtime!r}; valid: chunked, vanilla")
    if runtime == "chunked" and (grid[0] % tile or grid[1] % tile):
        raise UsageError(f"--tile {tile} must divide the token grid {grid[0]}x{grid[1]}")
    if runtime == "vanilla" and cache.policy.name != "none":
        raise UsageError("--runtime vanilla runs the stock pipeline and only supports --cache-policy none")
    if out.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UsageError(f"--out {out}: unsupported format {out.suffix or '(none)'}; use .mp4 or .gif")
    _check_writable(out, "--out")
    for path, what in ((report, "--report"), (recompute_map, "--recompute-map")):
        if path is not None:
            _check_writable(path, what)
    if recompute_map is not None and recompute_map.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UsageError(f"--recompute-map {recompute_map}: use .mp4 or .gif")
    if recompute_map is not None and runtime == "vanilla":
        raise UsageError("--recompute-map needs the chunked runtime")
    model, quiet, compare = o.model, o.quiet, o.compare
    _quiet_libraries()
    from motioncache_vllm.models.folders import ModelNotFoundError
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    try:
        pipe = load_pipeline(model)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    show_progress = not quiet and sys.stderr.isatty()
    request = GenerationRequest(
        prompt=prompt,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    result = generate_video(pipe, request, progress=show_progress, runtime=runtime, cache=cache)
    fields = dict(
        model=str(model),
        prompt=prompt,
        seed=seed,
        frames=result.frames.shape[0],
        height=result.frames.shape[1],
        width=result.frames.shape[2],
        steps=result.steps,
        guidance=result.guidance,
        policy=cache.policy.name,
        wall_s=round(result.wall_s, 4),
        runtime=runtime,
        **result.stats,
    )
    if runtime == "chunked":
        fields["cfg_batched"] = cache.pool.cfg_batched
    if result.recompute_map is not None:
        # per spatial block (the map broadcasts each block's count over its tile x tile tokens)
        fields["recompute_counts"] = result.recompute_map[:, ::tile, ::tile].astype(int).tolist()
    if compare:
        from motioncache_vllm.metrics import psnr_db, ssim

        baseline = generate_video(pipe, request, progress=show_progress, runtime="vanilla")
        psnr = psnr_db(result.frames, baseline.frames)
        fields.update(
            baseline_wall_s=round(baseline.wall_s, 4),
            speedup=round(baseline.wall_s / result.wall_s, 4),
            psnr_db=round(psnr, 3) if psnr != float("inf") else 99.0,
            ssim=round(ssim(result.frames, baseline.frames), 5),
        )
        if runtime == "chunked" and cache.policy.name != "none":
            # keep the two effects apart: chunked execution vs the cache policy itself
            chunked = generate_video(
                pipe,
                request,
                progress=show_progress,
                cache=CacheConfig(pool=PoolConfig(tile=tile, cfg_batched=cache.pool.cfg_batched)),
            )
            fields.update(
                chunked_wall_s=round(chunked.wall_s, 4),
                cache_speedup=round(chunked.wall_s / result.wall_s, 4),
                realised_over_ideal=round(chunked.wall_s / result.wall_s / result.stats["ideal_speedup"], 4),
            )
    from motioncache_vllm.video_io import write_video

    try:
        write_video(out, result.frames)
    except OSError as exc:  # never lose a finished video: keep it somewhere writable
        import tempfile

        rescue = Path(tempfile.mkdtemp(prefix="motioncache-")) / out.name
        write_video(rescue, result.frames)
        typer.echo(f"error: could not write {out} ({exc}); the video was saved to {rescue}", err=True)
        raise typer.Exit(1) from None
    if recompute_map is not None:
        from motioncache_vllm.runtime.heatmap import recompute_video

        write_video(recompute_map, recompute_video(result.frames, result.recompute_map, result.steps))
    summary = GenerationReport(**fields)
    if report is not None:
        report.write_bytes(msgspec.json.format(msgspec.json.encode(summary), indent=2) + b"\n")
    line = f"wrote {out} ({fields['frames']} frames, {fields['height']}x{fields['width']}) in {fields['wall_s']:.2f}s"
    if compare:
        line += (
            f"; vs full compute: {fields['speedup']:.2f}x, PSNR {fields['psnr_db']:.2f} dB, SSIM {fields['ssim']:.4f}"
        )
    if not quiet:
        typer.echo(line)


def _check_shape(model, prompt, frames, height, width, guidance, pool_mib) -> ModelGeometry:
    """The checks every entry point shares (:mod:`motioncache_vllm.limits`), and the memory
    check, from the model folder's JSON: before any weight is loaded."""
    from motioncache_vllm.limits import (
        InvalidRequest,
        check_memory,
        check_request,
        default_budget_bytes,
        read_geometry,
        request_memory,
    )
    from motioncache_vllm.models.folders import SKYREELS_DF_DEFAULTS, ModelNotFoundError, resolve_model_path

    try:
        geometry = read_geometry(resolve_model_path(model), SKYREELS_DF_DEFAULTS)
    except ModelNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"model {model}: unreadable configuration ({exc})") from None
    names = {
        "prompt": "--prompt",
        "num_frames": "--frames",
        "height": "--height",
        "width": "--width",
        "guidance_scale": "--guidance",
    }
    try:
        check_request(
            geometry, prompt=prompt, num_frames=frames, height=height, width=width, guidance_scale=guidance, names=names
        )
        need = request_memory(
            geometry,
            num_frames=frames,
            height=height,
            width=width,
            guidance_scale=guidance,
            pool_bounded=pool_mib is not None,
        )
        check_memory(need, default_budget_bytes())
    except InvalidRequest as exc:
        raise UsageError(str(exc)) from None
    return geometry


@app.command()
def policies() -> None:
    """List the cache policies and their settings (for --policy-config key=value)."""
    import msgspec

    from motioncache_vllm.config import PolicyConfigBase, field_docs
    from motioncache_vllm.policies import get_policy_class, policy_names

    def echo_settings(config_cls: type, leave_out: frozenset[str] = frozenset()) -> None:
        docs = field_docs(config_cls)
        for f in msgspec.structs.fields(config_cls):
            if f.name not in leave_out:
                typer.echo(f"  {f.name} = {f.default!r}: {docs.get(f.name, '')}")

    # the scene-cut guard's settings are the same for every policy: listed once, at the end
    shared = frozenset(f.name for f in msgspec.structs.fields(PolicyConfigBase))
    for name in policy_names():
        cls = get_policy_class(name)
        typer.echo(f"{name}: {cls.description}")
        echo_settings(cls.config_cls, leave_out=shared)
    typer.echo("every policy also takes the scene-cut guard's settings:")
    echo_settings(PolicyConfigBase)


@app.command()
def calibrate(
    model: str = typer.Option("embedded", help="'embedded' or a diffusers SkyReels-V2 DF folder (written into)."),
    prompts: Optional[Path] = typer.Option(None, help="Captions, one per line (default: 4 training-style captions)."),
    frames: Optional[int] = typer.Option(None, help="Frames per calibration video (default: the model's)."),
    degree: int = typer.Option(4, help="Polynomial degree."),
    steps: str = typer.Option(
        "10,20,30", help="Schedule lengths to sample, comma-separated (several widen the fitted range)."
    ),
    sensitivity: bool = typer.Option(
        False,
        help="Also measure steperror's skip sensitivity per schedule length (one extra run per step and "
        "caption without a cut: slow).",
    ),
) -> None:
    """Fit the model's rescale polynomial (TeaCache-style), record its MagCache ratios and
    steperror's guided-change curve, and store them beside its weights."""
    from motioncache_vllm.models.folders import ModelNotFoundError, resolve_model_path

    # user mistakes are refused before torch and the model code load
    try:
        lines = _read_prompts(prompts) if prompts else CALIBRATION_PROMPTS
        schedule = tuple(int(n) for n in steps.split(",") if n.strip())
        if not schedule or min(schedule) < 2:
            raise UsageError(f"--steps must list schedule lengths >= 2, got {steps!r}")
        folder = resolve_model_path(model)
    except ValueError:
        _fail(f"--steps must be comma-separated integers, got {steps!r}")
    except (UsageError, ModelNotFoundError) as exc:
        _fail(str(exc))
    _quiet_libraries()
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.calibrate import calibrate as fit, save_calibration, skip_sensitivity

    try:
        pipe = load_pipeline(model)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    record = fit(pipe, lines, degree=degree, num_frames=frames, steps=schedule)
    if sensitivity:
        plain = [line for line in lines if " cut to " not in line] or lines
        record["skip_sensitivity"] = {str(n): skip_sensitivity(pipe, plain, n, num_frames=frames) for n in schedule}
    path = save_calibration(record, folder)
    typer.echo(
        f"wrote {path}: {record['samples']} samples, R^2 {record['r2']:.3f}, mean output change {record['y_mean']:.3f}/step"
    )


CALIBRATION_PROMPTS = [
    "a red circle moves right slowly",
    "a blue square bounces up",
    "camera pans left over a green triangle",
    "a yellow circle moves down then cut to a white square moves left",
]


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UsageError(f"cannot read prompts file {path}: {exc.strerror or exc}") from None
    if not lines:
        raise UsageError(f"prompts file {path} has no captions")
    return lines


@app.command()
def gate(
    model: str = typer.Option("embedded", help="'embedded' or a pipeline folder of the embedded architecture."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: the model's)."),
    samples: Optional[Path] = typer.Option(None, help="Also write a GIF strip of the first 4 samples here."),
    seed: int = typer.Option(0),
) -> None:
    """Quality gate: on held-out captions, does a tracker agree with colour and direction?"""
    from motioncache_vllm.models.folders import ModelNotFoundError, resolve_model_path

    try:  # before torch and the model code load
        resolve_model_path(model)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    _quiet_libraries()
    import numpy as np

    from motioncache_vllm.config import GenerationRequest
    from motioncache_vllm.data.procedural import held_out_prompts
    from motioncache_vllm.data.tracker import check
    from motioncache_vllm.models.loading import load_pipeline
    from motioncache_vllm.runtime.generate import generate_video

    try:
        pipe = load_pipeline(model)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    prompts = held_out_prompts()
    colour = direction = 0
    strips = []
    for i, prompt in enumerate(prompts):
        video = generate_video(pipe, GenerationRequest(prompt=prompt, num_inference_steps=steps, seed=seed + i))
        c, d = check(video.frames, prompt)
        colour, direction = colour + c, direction + d
        typer.echo(f"{prompt:40s} colour {'ok' if c else '--'}  direction {'ok' if d else '--'}")
        if len(strips) < 4:
            strips.append(video.frames)
    n = len(prompts)
    typer.echo(
        f"colour agreement {colour}/{n} = {colour / n:.0%}; direction agreement {direction}/{n} = {direction / n:.0%}"
    )
    if samples is not None:
        from motioncache_vllm.video_io import write_video

        write_video(samples, np.concatenate(strips, axis=2))


@app.command()
def bench(
    suite: str = typer.Argument(
        ..., help="pareto, overhead, memory, granularity, cuts, long, cfg, oracle, throughput (vLLM) or fleet (Ray)."
    ),
    model: str = typer.Option("embedded"),
    prompts: Optional[Path] = typer.Option(None, help="Captions, one per line (default: the held-out set)."),
    quick: bool = typer.Option(
        False,
        help="A few minutes: 2 prompts, 17 frames, 10 steps, 1 repeat, fewer knobs "
        "(throughput: 1 and 2 concurrent, 9 frames, 4 steps).",
    ),
    out: Path = typer.Option(Path("benchmarks/results"), help="Directory for SUITE.json and SUITE.png."),
    frames: Optional[int] = typer.Option(
        None, help="Frames per video (default 33; 17 with --quick; throughput: 17, 9 with --quick)."
    ),
    steps: Optional[int] = typer.Option(
        None, help="Denoising steps (default: the model's; 10 with --quick; throughput: 4 with --quick)."
    ),
    repeats: Optional[int] = typer.Option(
        None, help="Timed repeats per prompt (default 3; 1 with --quick; throughput: library-path runs)."
    ),
    policies: Optional[str] = typer.Option(
        None,
        help="throughput: the cache policies to measure, comma-separated (default: none,motion); "
        "oracle: the caches compared with the oracles (default: teacache,magcache,tokenrate).",
    ),
    seed: int = typer.Option(0, help="Seed of the first prompt (prompt i: seed + i)."),
) -> None:
    """Run a benchmark suite: prints a table, writes OUT/SUITE.json and a plot."""
    import msgspec

    from motioncache_vllm.bench import SUITE_NAMES
    from motioncache_vllm.bench.prompts import load_prompts
    from motioncache_vllm.models.folders import ModelNotFoundError, resolve_model_path

    # user mistakes are refused before torch and the model code load (~15 s)
    if suite not in SUITE_NAMES:
        _fail(f"unknown suite {suite!r}; valid: {', '.join(SUITE_NAMES)}")
    try:
        resolve_model_path(model)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    try:
        lines = load_prompts(prompts)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read prompts: {exc}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _check_writable(out / f"{suite}.json", "--out")
    except (OSError, UsageError) as exc:
        _fail(str(exc))
    policy_names = None
    if policies is not None:
        from motioncache_vllm.policies import policy_names as known_policies

        policy_names = tuple(p.strip() for p in policies.split(",") if p.strip())
        unknown = [p for p in policy_names if p not in known_policies()]
        if not policy_names or unknown:
            _fail(f"--policies: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(known_policies())}")
    _quiet_libraries()
    import motioncache_vllm.fleet.bench  # noqa: F401  (registers the Ray fleet's suite, "fleet")
    from motioncache_vllm.bench.suites import BenchSettings, default_settings, run_suite, to_table
    from motioncache_vllm.models.loading import load_pipeline

    defaults = default_settings(suite, quick)
    try:
        pipe = load_pipeline(model)
    except ModelNotFoundError as exc:
        _fail(str(exc))
    settings = BenchSettings(
        prompts=lines[:2] if quick else lines,
        frames=frames or defaults["frames"],
        steps=steps or defaults["steps"],
        repeats=repeats or defaults["repeats"],
        model=model,
        policies=policy_names,
        seed=seed,
    )
    from tqdm.auto import tqdm

    from motioncache_vllm.vllm_plugin.server_process import ServerError

    try:
        with tqdm(desc=suite, disable=not sys.stderr.isatty()) as bar:
            result = run_suite(pipe, suite, settings, quick, out, progress_bar=bar)
    except ServerError as exc:  # throughput: the vLLM server did not start or failed a request
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    (out / f"{suite}.json").write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    typer.echo(to_table(result))
    typer.echo(f"wrote {out / (suite + '.json')}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Any other option is passed to `vllm serve` (e.g. --max-num-seqs 8, --api-key KEY).",
)
def serve(
    ctx: typer.Context,
    model: str = typer.Option(
        "embedded",
        help="'embedded', 'embedded-textured', a diffusers SkyReels-V2 DF folder, or a model folder built for vLLM.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind (default: loopback only)."),
    port: int = typer.Option(8000, help="TCP port."),
    cache_policy: Optional[str] = typer.Option(
        None, help="Default cache policy of requests: none, teacache, flowcache, motion, magcache (default: motion)."
    ),
    cache_pool_mib: Optional[float] = typer.Option(None, help="Activation pool budget in MiB (default: unbounded)."),
    workers: int = typer.Option(
        0, help="Serve with a Ray fleet of this many engine workers behind one API (0: one vLLM server)."
    ),
    ray_address: Optional[str] = typer.Option(
        None, help="With --workers: join this Ray cluster ('auto' or HOST:PORT) instead of starting a local one."
    ),
    fleet_config: Optional[str] = typer.Option(
        None, help="With --workers: JSON of fleet settings (FleetConfig: max_attempts, cpus_per_worker, ...)."
    ),
    memory_budget_mib: Optional[float] = typer.Option(
        None,
        help="Memory of the requests running at once, by their peak estimate; a request over it is "
        "refused (400), one that fits later waits. Default: 80% of the memory available at start-up, "
        "less the pool budget.",
    ),
    request_timeout: Optional[float] = typer.Option(
        None, help="Seconds one generation request may run before it is cancelled (504). Default: no limit."
    ),
) -> None:
    """Serve the video model over HTTP with vLLM (POST /v1/videos, POST /pooling, GET /metrics)."""
    import json
    import socket

    from motioncache_vllm.policies import InvalidPolicyConfig, UnknownPolicyError
    from motioncache_vllm.vllm_plugin import launcher

    extra = list(ctx.args)
    try:
        extra_config = launcher.additional_config_of(extra)
    except ValueError as exc:
        _fail(str(exc))
    if "--model" in launcher.given_flags(extra) or (extra and not extra[0].startswith("-")):
        _fail("give the model with --model (embedded or a path), not as another argument")
    if cache_policy is None:
        # a policy in --additional-config stands; otherwise MotionCache's own
        policy, pass_policy = extra_config.get("cache_policy", "motion"), "cache_policy" not in extra_config
    else:
        policy, pass_policy = cache_policy, True
    from motioncache_vllm.vllm_plugin.messages import EngineCacheSettings

    settings = {**extra_config, "cache_policy": policy}
    if cache_pool_mib is not None:
        settings["cache_pool_mib"] = cache_pool_mib
    from motioncache_vllm.limits import MIB, ServeSettings

    serve_settings = {k: v for k, v in extra_config.items() if k.startswith("serve_")}
    for key, value in (("serve_memory_budget_mib", memory_budget_mib), ("serve_request_timeout_s", request_timeout)):
        if value is not None:
            serve_settings[key] = value
    try:  # what the engine will check at start-up, checked now
        EngineCacheSettings.from_additional_config(settings)
        serve_limits = ServeSettings.from_additional_config(serve_settings)
    except (ValueError, UnknownPolicyError, InvalidPolicyConfig) as exc:
        flag = {"serve_memory_budget_mib": "--memory-budget-mib", "serve_request_timeout_s": "--request-timeout"}
        _fail(next((str(exc).replace(k, v) for k, v in flag.items() if k in str(exc)), str(exc)))
    # one budget for the API process and the engine: derived once, here
    pool_mib = settings.get("cache_pool_mib")
    serve_settings["serve_memory_budget_mib"] = round(serve_limits.memory_budget_bytes(pool_mib) / MIB, 1)
    if not 0 < port < 65536:
        _fail(f"--port must be in 1..65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")

    from motioncache_vllm.models.folders import SHIPPED_MODELS, ModelNotFoundError
    from motioncache_vllm.vllm_plugin import ARCHITECTURE, build_model_dir

    shipped = model in SHIPPED_MODELS
    path = Path(model).expanduser()
    config_path = path / "config.json"
    if (
        not shipped
        and config_path.is_file()
        and ARCHITECTURE in json.loads(config_path.read_text()).get("architectures", [])
    ):
        model_dir = path.resolve()  # already a vLLM folder of the video model
    else:
        if not shipped and not path.exists():
            _fail(f"model path {model} does not exist")
        try:
            model_dir = build_model_dir(model)
        except ModelNotFoundError as exc:
            _fail(str(exc))
    ready = f"motioncache: serving {model} on http://{launcher.probe_host(host)}:{port} (cache policy {policy})"
    if workers < 0:
        _fail(f"--workers must be >= 0, got {workers}")
    if (ray_address is not None or fleet_config is not None) and not workers:
        _fail("--ray-address and --fleet-config need --workers N")
    if workers:
        from motioncache_vllm.fleet.cli import serve_fleet

        serve_fleet(
            str(model_dir),
            host=host,
            port=port,
            served_model_name=model,
            extra=extra,
            cache_policy=policy,
            pass_policy=pass_policy,
            cache_pool_mib=cache_pool_mib,
            settings=settings,
            workers=workers,
            ray_address=ray_address,
            fleet_config=fleet_config,
            ready_line=ready.replace("(cache policy", f"with {workers} Ray workers (cache policy"),
        )
        return
    launcher.launch(
        str(model_dir),
        host=host,
        port=port,
        served_model_name=model,
        extra=extra,
        cache_policy=policy if pass_policy else None,
        cache_pool_mib=cache_pool_mib,
        serve_settings=serve_settings,
        ready_line=ready,
    )


research_app = typer.Typer(no_args_is_help=True, help="Research harnesses built on the runtime.")
app.add_typer(research_app, name="research")


@research_app.command("kv")
def research_kv(
    suite: str = typer.Argument(
        ...,
        help="video (one long video), scenes (static/pan/cut prompts), text (tiny LM) or crossmodal "
        "(video + text K/V under one budget).",
    ),
    quick: bool = typer.Option(
        False, help="Minutes: 1 prompt, 3 chunks, 2 steps, budgets 50/25% (text: fewer samples)."
    ),
    prompts: Optional[Path] = typer.Option(None, help="Captions, one per line (video suites)."),
    out: Path = typer.Option(Path("benchmarks/results"), help="Directory for kv_SUITE.json and kv_SUITE.png."),
    chunks: Optional[int] = typer.Option(None, help="AR chunks per video (default: video 40, scenes 8)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps per chunk (default 4)."),
    guidance: Optional[float] = typer.Option(None, help="CFG scale (default: the model's; 1 = one branch)."),
    budgets: Optional[str] = typer.Option(
        None,
        help="Shares of the full context K/V to test, comma-separated (default 0.75,0.5,0.25,0.1; text: kept shares).",
    ),
    model: str = typer.Option("embedded", help="'embedded', 'embedded-textured' or a diffusers SkyReels-V2 DF folder."),
    policies: Optional[str] = typer.Option(
        None, help="Eviction policies (crossmodal: modes) to run, comma-separated (default: all)."
    ),
    resume: bool = typer.Option(
        False,
        help="video, scenes, crossmodal: keep the points already in OUT for the same settings, run only the "
        "missing ones; video/scenes cache reference videos in OUT/kv_ref (run a long suite as several short "
        "invocations).",
    ),
) -> None:
    """K/V eviction under a budget: writes OUT/kv_SUITE.json and a plot, prints a table."""
    import msgspec

    from motioncache_vllm.research.kv.suites import SUITES, default_settings, run_suite, to_table

    if suite not in SUITES:
        _fail(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    for name, value in (("--chunks", chunks), ("--steps", steps)):
        if value is not None and value <= 0:
            _fail(f"{name} must be a positive integer, got {value}")
    try:
        lines = _read_prompts(prompts) if prompts else None
        out.mkdir(parents=True, exist_ok=True)
        _check_writable(out / f"kv_{suite}.json", "--out")
    except (OSError, UsageError) as exc:
        _fail(str(exc))
    _quiet_libraries()
    settings = default_settings(suite, quick, lines)
    settings.chunks, settings.steps = chunks or settings.chunks, steps or settings.steps
    if budgets is not None:
        try:
            shares = tuple(float(b) for b in budgets.split(",") if b.strip())
        except ValueError:
            shares = ()
        if not shares or not all(0.0 < b <= 1.0 for b in shares):
            _fail(f"--budgets must list shares in (0, 1], e.g. 0.5,0.25; got {budgets!r}")
        settings.budgets = tuple(sorted(set(shares) | {1.0}, reverse=True))
    if guidance is not None:
        if guidance < 0:
            _fail(f"--guidance must be >= 0, got {guidance}")
        settings.guidance = guidance
    if policies is not None:
        from motioncache_vllm.research.kv.crossmodal import MODES
        from motioncache_vllm.research.kv.policies import POLICIES

        valid = list(MODES) if suite == "crossmodal" else [n for n in POLICIES if n != "full"]
        names = tuple(n.strip() for n in policies.split(",") if n.strip())
        bad = [n for n in names if n not in valid]
        if not names or bad:
            _fail(f"--policies: unknown {bad or policies!r}; valid: {', '.join(valid)}")
        settings.policies = names
    from motioncache_vllm.models.folders import ModelNotFoundError
    from motioncache_vllm.research.kv.suites import ResumeMismatch

    try:
        result = run_suite(
            suite, settings, quick, out, model=model, log=lambda line: typer.echo(line, err=True), resume=resume
        )
    except (ModelNotFoundError, ResumeMismatch) as exc:
        _fail(str(exc))
    (out / f"kv_{suite}.json").write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    typer.echo(to_table(result))
    typer.echo(f"wrote {out / f'kv_{suite}.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
