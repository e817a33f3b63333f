"""Scatter for docs/results/when_contrast_helps.md, "Does the advantage order the pairs?": the
diagnostic's kept-position contrast advantage before any fine-tune against the gain each pair
measured, natural pairs beside the positive control's dials.
Usage: python pairs_scatter.py pairs_points.json positive_control_points.json out.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

natural = json.load(open(sys.argv[1]))
control = json.load(open(sys.argv[2]))
fig, ax = plt.subplots(figsize=(6.4, 4.0))
for pts, label, marker in ((natural, "natural pairs", "s"), (control, "positive control (dial)", "o")):
    xs = [p["advantage"] for p in pts]
    ys = [p["gain"] for p in pts]
    ax.errorbar(xs, ys, yerr=[[p["gain"] - p["lo"] for p in pts], [p["hi"] - p["gain"] for p in pts]],
                fmt=marker, capsize=3, label=label)
    for p in pts:
        ax.annotate(p.get("pair") or f"dial {p['dial']}", (p["advantage"], p["gain"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
both = natural + control
rho_n, p_n = spearmanr([p["advantage"] for p in natural], [p["gain"] for p in natural])
rho_a, p_a = spearmanr([p["advantage"] for p in both], [p["gain"] for p in both])
print(f"natural pairs: rho {rho_n:.2f} (n={len(natural)}, p {p_n:.2g}); all: rho {rho_a:.2f} (n={len(both)}, p {p_a:.2g})")
ax.set_title(f"Spearman rho: natural pairs {rho_n:.2f} (n={len(natural)}), all {rho_a:.2f} (n={len(both)}, p {p_a:.2g})",
             fontsize=9)
ax.set_xlabel("contrast advantage at kept reference positions, before fine-tuning (pp)", fontsize=8)
ax.set_ylabel("measured LightReasoner gain (pp; bars: seed range or 95% interval)", fontsize=8)
ax.axhline(0, color="grey", lw=0.5)
ax.axvline(0, color="grey", lw=0.5)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[3], dpi=90)
