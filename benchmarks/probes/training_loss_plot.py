"""Plot a training run's loss curve: ``python benchmarks/probes/training_loss_plot.py RUN/loss.csv OUT.png``
(the running loss ``train.py`` logs every 50 steps). Plain matplotlib: no torch needed."""

from __future__ import annotations

import csv
import sys


def main(csv_path: str, out: str, title: str = "textured fine-tune from the shipped EMA weights (CPU)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], "o-")
    ax.set_xlabel("step")
    ax.set_ylabel("running loss (v-prediction MSE)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:])
