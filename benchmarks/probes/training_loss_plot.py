"""Plot a training run's loss curve: ``python benchmarks/probes/training_loss_plot.py RUN/loss.csv OUT.png``
(the running loss ``train.py`` logs every 50 steps)."""

from __future__ import annotations

import csv
import sys

from motioncache_vllm.bench.common import label_axes, pyplot, save_figure


def main(csv_path: str, out: str, title: str = "textured fine-tune (CPU)") -> None:
    rows = list(csv.DictReader(open(csv_path)))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], "o-")
    label_axes(ax, "step", "running loss (v-prediction MSE)", title)
    save_figure(fig, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
