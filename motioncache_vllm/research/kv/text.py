"""The text suite: presses on a tiny causal LM trained here on associative recall.

The model (``LlamaForCausalLM``, 2 layers, width 64, 4 heads; :mod:`.recall`) ships in
``motioncache_vllm/weights/recall_lm``; :func:`train_and_save` rebuilds it with a fixed
seed (``python -m motioncache_vllm.research.kv.text --train``). Our presses (window,
H2O-style, LRU, random, temporal similarity) run here; kvpress's presses run on the same
weights and the same sequences in a separate environment (kvpress 0.5.5 needs
transformers < 5.3, this project >= 5.19): ``.venv-kvpress`` (see benchmarks/KV_EVICTION.md),
found via ``MOTIONCACHE_KVPRESS_PYTHON`` or ``./.venv-kvpress/bin/python``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from motioncache_vllm.research.kv import recall

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "recall_lm"
KEPT = (1.0, 0.75, 0.5, 0.25, 0.1)


def train_and_save(path: Path = WEIGHTS, log=print, **train_args) -> Path:
    model = recall.train(log=log, **train_args)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_model(path: Path = WEIGHTS):
    from transformers import LlamaForCausalLM

    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no recall model at {path}: python -m motioncache_vllm.research.kv.text --train")
    return LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def eval_set(variant: str, sequences: int, seed: int = 1234) -> recall.Batch:
    """Held-out sequences (another seed than training's), 4 queries each."""
    return recall.make_batch(variant, sequences, 4, torch.Generator().manual_seed(seed + len(variant)))


def run_own_presses(
    model, data: dict[str, recall.Batch], kept=KEPT, presses=recall.OWN_PRESSES, batch: int = 32, log=print
) -> list[dict]:
    points = []
    for variant, b in data.items():
        for press in presses:
            for share in kept:
                if share >= 1.0 and press != presses[0]:
                    continue  # nothing evicted: one row for all presses
                correct = 0
                gen = torch.Generator().manual_seed(0)
                for lo in range(0, b.context.shape[0], batch):
                    pred = recall.answer_with_press(
                        model, b.context[lo : lo + batch], b.queries[lo : lo + batch], press, share, gen
                    )
                    correct += int((pred == b.answers[lo : lo + batch]).sum())
                acc = correct / b.answers.numel()
                name = "full" if share >= 1.0 else press
                points.append(
                    {
                        "policy": name,
                        "budget": share,
                        "variant": variant,
                        "accuracy": round(acc, 4),
                        "context_tokens": b.context.shape[1],
                        "answers": b.answers.numel(),
                    }
                )
                log(f"{variant:5s} {name:9s} kept {share:.2f}: accuracy {acc:.3f}")
    return points


def kvpress_python() -> str | None:
    env = os.environ.get("MOTIONCACHE_KVPRESS_PYTHON")
    if env:
        return env
    local = Path.cwd() / ".venv-kvpress" / "bin" / "python"
    return str(local) if local.is_file() else None


def run_kvpress(data: dict[str, recall.Batch], kept=KEPT, log=print) -> tuple[list[dict], str | None]:
    """kvpress's presses on the same weights and sequences, in the separate environment.
    Returns (points, None) or ([], why not)."""
    python = kvpress_python()
    if python is None:
        return [], "no kvpress environment (set MOTIONCACHE_KVPRESS_PYTHON or create ./.venv-kvpress)"
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "data.pt", Path(tmp) / "points.json"
        torch.save(
            {v: {"context": b.context, "queries": b.queries, "answers": b.answers} for v, b in data.items()}, inp
        )
        root = str(Path(__file__).resolve().parents[3])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [
            python,
            "-m",
            "motioncache_vllm.research.kv.kvpress_bridge",
            "--model",
            str(WEIGHTS),
            "--data",
            str(inp),
            "--out",
            str(out),
            "--kept",
            ",".join(str(k) for k in kept),
        ]
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return (
                [],
                f"kvpress run failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}",
            )
        for line in proc.stdout.splitlines():
            log(line)
        return json.loads(out.read_text()), None


def run_text_suite(quick: bool, kept=None, log=print) -> dict:
    torch.manual_seed(0)
    model = load_model()
    n = 32 if quick else 128
    kept = kept or ((1.0, 0.5, 0.25) if quick else KEPT)
    data = {v: eval_set(v, n) for v in recall.VARIANTS}
    with torch.inference_mode():
        points = run_own_presses(model, data, kept, log=log)
    kv_points, why = run_kvpress(data, kept, log=log)
    failed = {p["policy"]: p["error"] for p in kv_points if "error" in p}
    return {
        "points": points + [p for p in kv_points if "error" not in p],
        "kvpress": why or "ran",
        "kvpress_failed": failed,
        "settings": {
            "sequences_per_variant": n,
            "queries_per_sequence": 4,
            "kept": list(kept),
            "variants": {v: {"pairs": p, "filler_tokens": f} for v, (p, f) in recall.VARIANTS.items()},
            "model": recall.MODEL_CONFIG,
        },
    }


if __name__ == "__main__":
    if "--train" in sys.argv:
        torch.set_num_threads(1)
        print(train_and_save())
