"""Train the embedded model: ``python -m motioncache_vllm.train --minutes 60``.

Rectified-flow v-prediction (v = noise - x0, as the SkyReels-V2 DF scheduler expects) on
procedural clips, with diffusion-forcing noise levels per causal block:

- ``forcing``  (50%): independent noise level per block, sorted so earlier blocks are
  cleaner (the asynchronous schedule);
- ``context``  (30%): blocks before k clean (t = 0), block k noisy, later blocks pure
  noise (t = 999): exactly what pure chunk-by-chunk sampling feeds the model;
- ``uniform``  (20%): one level for all blocks (synchronous mode).

Captions are dropped 10% of the time (zero text states, what the pipeline feeds for the
empty negative prompt), so classifier-free guidance works.

Resumable: a run directory keeps the full state (model, EMA, optimiser, step); with no
state there, training starts from ``--init-from`` (default: the export folder if it holds
a pipeline, else the shipped EMA weights, else a fresh model). Every ``--save-every``
steps the EMA weights are exported, in fp16, to ``--out-dir`` (default: the package's
``weights/embedded`` folder, what ``load_pipeline("embedded")`` reads).

``--mix textured`` trains on the widened data of issue 11 (textured static backgrounds,
distractors, pans over texture; :mod:`motioncache_vllm.data.procedural`), e.g. a
fine-tune of the shipped model into a second folder::

    python -m motioncache_vllm.train --mix textured --run-dir runs/textured \
        --out-dir motioncache_vllm/weights/embedded_textured --minutes 10
"""

from __future__ import annotations

import copy
import csv
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import typer

from motioncache_vllm.data.procedural import ClipGenerator
from motioncache_vllm.models.embedded import CAUSAL_BLOCK_SIZE, EMBEDDED_DIR, FLOW_SHIFT, MAX_SEQUENCE_LENGTH
from motioncache_vllm.models.latent import fit_linear_latent
from motioncache_vllm.models.loading import build_pipeline, load_pipeline

app = typer.Typer(add_completion=False)


def shifted_sigma(u: torch.Tensor, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """The flow-shift warp the UniPC flow scheduler applies to its sigmas."""
    return shift * u / (1 + (shift - 1) * u)


def sample_block_sigmas(rng: torch.Generator, batch: int, blocks: int) -> torch.Tensor:
    """Noise level per (sample, causal block) following the mix in the module docstring."""
    sig = torch.empty(batch, blocks)
    mode = torch.rand(batch, generator=rng)
    for i in range(batch):
        u = torch.rand(blocks, generator=rng)
        if mode[i] < 0.5:
            sig[i] = shifted_sigma(u.sort().values)
        elif mode[i] < 0.8:
            k = int(torch.randint(0, blocks, (1,), generator=rng))
            sig[i] = 1.0
            sig[i, :k] = 0.0
            sig[i, k] = shifted_sigma(u[k])
        else:
            sig[i] = shifted_sigma(u[0])
    return sig


class ClipBatches(torch.utils.data.Dataset):
    """Batch ``k`` = clips ``k*B .. k*B+B-1`` of the generator, so a DataLoader's workers
    render them in parallel and a resumed run sees the same stream."""

    def __init__(self, gen: ClipGenerator, batch_size: int) -> None:
        self.gen, self.batch_size = gen, batch_size

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, k: int) -> tuple[np.ndarray, list[str]]:
        clips = [self.gen.clip(k * self.batch_size + i) for i in range(self.batch_size)]
        return np.stack([c.frames for c in clips]), [c.caption for c in clips]


def encode_text(pipe, captions: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
    """Text states exactly as the pipeline builds them: encoder output, zeroed after the tokens."""
    tok = pipe.tokenizer(
        captions, padding="max_length", max_length=MAX_SEQUENCE_LENGTH, truncation=True, return_tensors="pt"
    ).to(device)
    hidden = pipe.text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
    return hidden * tok.attention_mask.unsqueeze(-1).to(hidden.dtype)


def export_ema(pipe, ema_transformer, ema_text, out_dir: Path, info: dict | None = None) -> None:
    """Save the pipeline with EMA weights in fp16 (what ships in the package); ``info`` (how
    the weights were trained) goes to ``training.json`` beside them, so the folder says what it is."""
    shipped = build_pipeline(copy.deepcopy(pipe.vae).cpu())
    shipped.transformer.load_state_dict({k: v.cpu() for k, v in ema_transformer.state_dict().items()})
    shipped.text_encoder.load_state_dict({k: v.cpu() for k, v in ema_text.state_dict().items()})
    shipped.transformer.to(torch.float16)
    shipped.text_encoder.to(torch.float16)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shipped.save_pretrained(tmp)
    if info is not None:
        (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


@app.command()
def main(
    run_dir: Path = typer.Option(Path("runs/embedded"), help="Resumable training state lives here."),
    out_dir: Path = typer.Option(EMBEDDED_DIR, help="Where the fp16 EMA pipeline is exported."),
    init_from: Optional[Path] = typer.Option(
        None, help="Pipeline folder a new run starts from (default: --out-dir if it holds one, else the shipped)."
    ),
    mix: str = typer.Option("flat", help="Training data: 'flat' (the shipped model's) or 'textured' (issue 11)."),
    minutes: float = typer.Option(60.0, help="Wall-clock budget of this sitting."),
    max_steps: int = typer.Option(100_000, help="Stop at this global step."),
    batch_size: int = typer.Option(8),
    num_frames: int = typer.Option(33, help="Frames per training clip (4k+1)."),
    lr: float = typer.Option(3e-4),
    warmup_steps: int = typer.Option(500, help="Linear learning-rate warm-up (global steps)."),
    ema_decay: float = typer.Option(0.999),
    caption_dropout: float = typer.Option(0.1),
    save_every: int = typer.Option(500),
    threads: int = typer.Option(2, help="torch intra-op threads."),
    device: str = typer.Option("auto", help="'auto' (CUDA when present), 'cpu' or 'cuda'."),
    workers: int = typer.Option(0, help="DataLoader processes rendering clips (0: in the training process)."),
    seed: int = typer.Option(0),
    reset_ema: bool = typer.Option(False, help="Restart the EMA from the live weights (after a bad EMA setting)."),
    quiet: bool = typer.Option(False),
) -> None:
    from tqdm import tqdm

    from motioncache_vllm.data.procedural import MIXES

    if mix not in MIXES:
        raise typer.BadParameter(f"unknown mix {mix!r}; valid: {', '.join(MIXES)}", param_hint="--mix")
    torch.set_num_threads(threads)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.pt"
    gen = ClipGenerator(seed=seed, num_frames=num_frames, mix=mix)

    if init_from is None:
        init_from = next((d for d in (out_dir, EMBEDDED_DIR) if (d / "model_index.json").is_file()), None)
    elif not (init_from / "model_index.json").is_file():
        raise typer.BadParameter(
            f"{init_from} is not a pipeline folder (no model_index.json)", param_hint="--init-from"
        )
    if init_from is not None:  # the latent (fixed linear VAE) comes with the weights: never refitted
        base = load_pipeline(init_from)
        vae = base.vae
    else:  # first sitting: fit the fixed latent on clips the training stream never reuses
        vae = fit_linear_latent(np.stack([ClipGenerator(seed + 1).clip(i).frames for i in range(256)]))
        base = build_pipeline(vae)
    pipe = build_pipeline(vae)
    pipe.transformer.load_state_dict(base.transformer.state_dict())
    pipe.text_encoder.load_state_dict(base.text_encoder.state_dict())
    vae.to(dev)
    model, text = pipe.transformer.float().to(dev).train(), pipe.text_encoder.float().to(dev).train()
    ema_model, ema_text = copy.deepcopy(model).eval(), copy.deepcopy(text).eval()
    params = list(model.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    step = 0
    origin = str(init_from) if init_from is not None else None  # where step 0 started (kept across sittings)
    if state_path.is_file():
        st = torch.load(state_path, weights_only=False, map_location=dev)
        model.load_state_dict(st["model"])
        text.load_state_dict(st["text"])
        ema_model.load_state_dict(st["ema_model"])
        ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        origin = st.get("init_from", origin)
    if reset_ema:
        ema_model.load_state_dict(model.state_dict())
        ema_text.load_state_dict(text.state_dict())
    rng = torch.Generator().manual_seed(seed * 1000 + step)
    info = {
        "data_mix": mix,
        "init_from": _model_name(origin),
        "seed": seed,
        "batch_size": batch_size,
        "num_frames": num_frames,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "ema_decay": ema_decay,
        "caption_dropout": caption_dropout,
        "note": "EMA weights (fp16) written by python -m motioncache_vllm.train; step counts from init_from",
    }

    mean = torch.tensor(vae.config.latents_mean, device=dev).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=dev).view(1, -1, 1, 1, 1)
    batches = iter(
        torch.utils.data.DataLoader(
            ClipBatches(gen, batch_size),
            batch_size=None,
            num_workers=workers,
            sampler=range(step, 1 << 40),
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
            pin_memory=dev.type == "cuda",
        )
    )
    log_path = run_dir / "loss.csv"
    new_log = not log_path.exists()
    log_file = log_path.open("a", newline="")
    log = csv.writer(log_file)
    if new_log:
        log.writerow(["step", "loss", "lr", "elapsed_s"])

    deadline = time.monotonic() + minutes * 60
    t0 = time.monotonic()
    bar = tqdm(total=max_steps, initial=step, disable=quiet, desc="train")
    running = None
    while step < max_steps and time.monotonic() < deadline:
        frames, clip_captions = next(batches)
        video = torch.as_tensor(frames).to(dev, non_blocking=True).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            x0 = (vae.encode(video).latents - mean) / std
        b, _, f, _, _ = x0.shape
        blocks = f // CAUSAL_BLOCK_SIZE
        x0 = x0[:, :, : blocks * CAUSAL_BLOCK_SIZE]
        sig_blocks = sample_block_sigmas(rng, b, blocks)
        sig = sig_blocks.repeat_interleave(CAUSAL_BLOCK_SIZE, dim=1).to(dev)  # (B, F)
        noise = torch.randn(x0.shape, generator=rng).to(dev)
        s5 = sig.view(b, 1, -1, 1, 1)
        xt = (1 - s5) * x0 + s5 * noise
        captions = [c if torch.rand(1, generator=rng) >= caption_dropout else "" for c in clip_captions]
        cond = encode_text(pipe, captions, dev)
        # bf16 autocast on GPU: the model is small enough that launch count, not FLOPs, bounds a step
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = model(
                hidden_states=xt,
                timestep=sig * 1000,
                encoder_hidden_states=cond,
                enable_diffusion_forcing=True,
                return_dict=False,
            )[0].float()
        target = noise - x0
        weight = (sig > 0).float().view(b, 1, -1, 1, 1)  # clean context frames have nothing to learn
        loss = ((pred - target) ** 2 * weight).sum() / (weight.sum() * pred.shape[1] * pred.shape[3] * pred.shape[4])
        warm = min(1.0, (step + 1) / max(warmup_steps, 1))
        for g in opt.param_groups:
            g["lr"] = lr * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # warm-up schedule (as diffusers' EMAModel): a fixed 0.999 from step 0 would leave
        # the shipped weights mostly at their random init for the first thousand steps
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_model, model), (ema_text, text)):
                for pe, pl in zip(ema.parameters(), live.parameters()):
                    pe.lerp_(pl, 1 - decay)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % 50 == 0:
            log.writerow([step, f"{running:.5f}", f"{lr * warm:.2e}", f"{time.monotonic() - t0:.0f}"])
            log_file.flush()
        if step % save_every == 0:
            _checkpoint(state_path, model, text, ema_model, ema_text, opt, step, origin)
            export_ema(pipe, ema_model, ema_text, out_dir, info | {"step": step})
    _checkpoint(state_path, model, text, ema_model, ema_text, opt, step, origin)
    export_ema(pipe, ema_model, ema_text, out_dir, info | {"step": step})
    bar.close()
    log_file.close()
    print(f"stopped at step {step}; EMA weights in {out_dir}")


def _model_name(path: str | None) -> str | None:
    """A shipped model's name for its folder (a portable training.json), else the path."""
    from motioncache_vllm.models.folders import SHIPPED_MODELS

    if path is None:
        return None
    return next((name for name, d in SHIPPED_MODELS.items() if Path(path).resolve() == d.resolve()), path)


def _checkpoint(path: Path, model, text, ema_model, ema_text, opt, step: int, origin: str | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "text": text.state_dict(),
            "ema_model": ema_model.state_dict(),
            "ema_text": ema_text.state_dict(),
            "opt": opt.state_dict(),
            "step": step,
            "init_from": _model_name(origin),
        },
        tmp,
    )
    tmp.replace(path)


if __name__ == "__main__":
    app()
