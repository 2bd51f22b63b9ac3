"""What every benchmark suite shares: the settings, the requests, machine facts, plotting."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from motioncache_vllm.config import GenerationRequest


@dataclass(frozen=True)
class BenchSettings:
    prompts: list[str]
    frames: int = 33
    steps: int | None = None
    repeats: int = 3
    seed: int = 0
    guidance: float | None = None  # None: the model's default CFG scale
    model: str = "embedded"  # what the throughput suite serves (the others get a loaded pipeline)
    policies: tuple[str, ...] | None = None  # throughput: the cache policies to measure (None: its default)


def machine_info() -> dict:
    return {
        "cores": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def bench_requests(s: BenchSettings) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt=p, num_frames=s.frames, num_inference_steps=s.steps, guidance_scale=s.guidance, seed=s.seed + i
        )
        for i, p in enumerate(s.prompts)
    ]


def finite(x: float) -> float:
    return 99.0 if x == float("inf") else round(x, 3)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(ax, xlabel: str, ylabel: str, title: str, legend_size: int = 7) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rows_table(rows: list[dict]) -> str:
    keys = list(rows[0]) if rows else []
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys)
    return "\n".join([head, *("| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows)])
