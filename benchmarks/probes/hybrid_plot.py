"""Plot of hybrid_pareto.py results: PSNR vs wall-clock speedup, one panel per caption set.

python benchmarks/probes/hybrid_plot.py OUT.png RESULT.json [RESULT.json ...]
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out, files = sys.argv[1], sys.argv[2:]
sets = [(path, s) for f in files for path, s in json.load(open(f))["sets"].items()]
fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
colours = {"teacache": "tab:blue", "magcache": "tab:orange", "magrefresh": "tab:red", "flowcache": "tab:green"}
for ax, (path, s) in zip(axes[0], sets):
    for policy, colour in colours.items():
        rows = sorted((r["speedup"], r["psnr_db"], r["cfg"]) for r in s["summary"] if r["policy"] == policy)
        if not rows:
            continue
        ax.plot(
            [r[0] for r in rows],
            [r[1] for r in rows],
            "o-" if policy != "magrefresh" else "s--",
            color=colour,
            label=policy,
        )
        for x, y, cfg in rows:
            ax.annotate(",".join(f"{v}" for v in cfg.values()) or "default", (x, y), fontsize=7)
    ax.set_title(path.split("/")[-1])
    ax.set_xlabel("wall-clock speedup over the stock loop")
    ax.set_ylabel("PSNR dB vs stock (mean of 4)")
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=110)
