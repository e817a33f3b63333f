"""Scatter for docs/results/when_contrast_helps.md, "Positive control": the diagnostic before fine-tuning
vs the measured gain. Usage: python positive_control_scatter.py positive_control_points.json out.png"""
import json, sys, glob
import matplotlib; matplotlib.use("Agg")
from matplotlib import pyplot as plt
from scipy.stats import spearmanr
pts = json.load(open(sys.argv[1]))   # [{"dial":x,"advantage":a,"flip_rate":f,"cd_diff":d,"gain":g,"lo":l,"hi":h}]
out = sys.argv[2]
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, key, label in ((axes[0], "advantage", "contrast advantage at kept reference positions (pp)"),
                       (axes[1], "cd_diff", "contrastive decoding - expert, answer level (pp)")):
    xs = [p[key] for p in pts]; ys = [p["gain"] for p in pts]
    ax.errorbar(xs, ys, yerr=[[p["gain"] - p["lo"] for p in pts], [p["hi"] - p["gain"] for p in pts]], fmt="o", capsize=3)
    for p in pts:
        ax.annotate(f"dial {p['dial']}", (p[key], p["gain"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    rho, pv = spearmanr(xs, ys)
    ax.set_title(f"Spearman rho {rho:.2f} (n={len(pts)}, p {pv:.2g})", fontsize=9)
    ax.set_xlabel(label, fontsize=8); ax.set_ylabel("LightReasoner gain on test, pp (mean; bars: seed range)", fontsize=8)
    ax.axhline(0, color="grey", lw=0.5); ax.axvline(0, color="grey", lw=0.5)
    print(key, "rho", rho, "p", pv)
fig.suptitle("Positive control: the diagnostic before fine-tuning vs the measured gain", fontsize=10)
fig.tight_layout(); fig.savefig(out, dpi=90)
