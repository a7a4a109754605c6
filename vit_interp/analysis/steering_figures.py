"""Figures of per-class steering: before → after per class, kept heads, and α dose-response."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from vit_interp.analysis.circuits import CircuitsTable


def before_after_figure(table: CircuitsTable) -> Figure:
    """Per class: head usage and accuracy before and after steering (test, 95% CIs)."""
    names = [r.name for r in table.rows]
    x = np.arange(len(names))
    figure = Figure(figsize=(max(6.0, 0.75 * len(names) + 2), 6.4))
    for i, (key_before, key_after, label) in enumerate((("baseline_usage", "steered_usage", "head usage"),
                                                         ("baseline_accuracy", "steered_accuracy", "test accuracy"))):
        axes = figure.add_subplot(2, 1, i + 1)
        for offset, key, color, what in ((-0.2, key_before, "tab:grey", "unsteered"), (0.2, key_after, "tab:blue", "steered")):
            values = [getattr(r, key) for r in table.rows]
            means = np.array([v["mean"] for v in values])
            error = np.array([[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]])
            axes.bar(x + offset, means, width=0.4, color=color, label=what, yerr=error, capsize=2)
        if label == "test accuracy":
            floors = [r.controls["floor"]["mean"] for r in table.rows]
            axes.scatter(x, floors, marker="_", s=300, color="tab:red", label="floor (all gated heads pruned)", zorder=3)
        axes.set_xticks(x, names, rotation=30, ha="right")
        axes.set_ylabel(label)
        axes.legend(fontsize=7, loc="lower right")
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"per-class steering of layer {table.layer}'s gate (test split)")
    figure.tight_layout()
    return figure


def kept_heads_heatmap(table: CircuitsTable) -> Figure:
    """Keep rate of each head per class, before and after steering."""
    before = np.array([r.keep_rate_before for r in table.rows])
    after = np.array([r.keep_rate_after for r in table.rows])
    n_classes, n_heads = before.shape
    figure = Figure(figsize=(2.2 + 1.1 * n_heads, 0.9 + 0.4 * n_classes))
    for i, (rates, title) in enumerate(((before, "unsteered"), (after, "steered"))):
        axes = figure.add_subplot(1, 2, i + 1)
        image = axes.imshow(rates, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axes.set_xticks(range(n_heads), [f"h{h}" for h in range(n_heads)])
        axes.set_yticks(range(n_classes), [r.name for r in table.rows] if i == 0 else [""] * n_classes)
        for c in range(n_classes):
            for h in range(n_heads):
                axes.text(h, c, f"{rates[c, h]:.2f}", ha="center", va="center", fontsize=6,
                          color="black" if rates[c, h] > 0.6 else "white")
        axes.set_title(f"{title}: keep rate of L{table.layer} heads")
    figure.colorbar(image, ax=figure.axes, fraction=0.03)
    return figure


def dose_response_figure(table: CircuitsTable) -> Figure:
    """Validation head usage and accuracy against the scale factor α, one line per class."""
    figure = Figure(figsize=(10, 4))
    usage_axes, accuracy_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for r in table.rows:
        curve = sorted(r.val_curve, key=lambda p: p["alpha"])
        alphas = [p["alpha"] for p in curve]
        line = usage_axes.plot(alphas, [p["usage"] for p in curve], marker="o", markersize=3, label=r.name)[0]
        accuracy_axes.plot(alphas, [p["accuracy"] for p in curve], marker="o", markersize=3, color=line.get_color())
        usage_axes.scatter([r.alpha], [next(p["usage"] for p in curve if p["alpha"] == r.alpha)], s=60,
                           facecolors="none", edgecolors=line.get_color())
    for axes, label in ((usage_axes, "head usage (validation)"), (accuracy_axes, "accuracy (validation)")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("scale factor α of the class's latents")
        axes.set_ylabel(label)
        axes.axvline(1.0, color="grey", linestyle=":")
        axes.grid(alpha=0.3)
    usage_axes.legend(fontsize=6, ncol=2)
    usage_axes.set_title("circles: the α chosen by the rule")
    figure.tight_layout()
    return figure
