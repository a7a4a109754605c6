"""Figures of head gates: per-class head usage, and accuracy against head usage with controls."""

from __future__ import annotations

from typing import Optional

from matplotlib.figure import Figure

from vit_interp.gating.curve import UsageCurve
from vit_interp.gating.evaluation import GateEvaluation


def head_usage_heatmap(evaluation: GateEvaluation, title: Optional[str] = None) -> Figure:
    """Class × (gated layer, head) keep rates, annotated, with each class's accuracy and usage."""
    rates = evaluation.keep_rate.flatten(1).numpy()  # [classes, layers * heads]
    n_classes, n_columns = rates.shape
    heads = evaluation.keep_rate.shape[-1]
    figure = Figure(figsize=(1.2 + 0.55 * n_columns + 2.4, 0.8 + 0.42 * n_classes))
    axes = figure.add_subplot()
    image = axes.imshow(rates, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes.set_xticks(range(n_columns), [f"L{layer}H{h}" for layer in evaluation.layers for h in range(heads)],
                    rotation=90 if n_columns > 12 else 0)
    labels = [f"{row['name']}  ({row['accuracy']:.1%}, u={row['usage']:.2f})" for row in evaluation.per_class]
    axes.set_yticks(range(n_classes), labels)
    if n_columns <= 24:
        for c in range(n_classes):
            for j in range(n_columns):
                axes.text(j, c, f"{rates[c, j]:.2f}", ha="center", va="center", fontsize=7,
                          color="black" if rates[c, j] > 0.6 else "white")
    figure.colorbar(image, ax=axes, label="keep rate")
    axes.set_title(title or f"head usage per class (overall {evaluation.usage:.3f}, accuracy {evaluation.accuracy:.2%})")
    figure.tight_layout()
    return figure


def usage_curve_figure(curve: UsageCurve, title: str = "accuracy vs head usage") -> Figure:
    """Gates (one per target), random masks at the gates' usage, best fixed subsets, ceiling and floor."""
    figure = Figure(figsize=(6.4, 4.4))
    axes = figure.add_subplot()
    styles = {"gate": ("o-", "tab:blue", "learned gate"), "random": ("s--", "tab:orange", "random masks, same usage"),
              "fixed": ("^-", "tab:green", "best fixed subset (chosen on validation)")}
    for kind, (marker, color, label) in styles.items():
        points = sorted(curve.of_kind(kind), key=lambda p: p["usage"])
        if not points:
            continue
        x = [p["usage"] for p in points]
        y = [p["accuracy"] for p in points]
        error = [[p["accuracy"] - p["ci_low"] for p in points], [p["ci_high"] - p["accuracy"] for p in points]]
        axes.errorbar(x, y, yerr=error, fmt=marker, color=color, label=label, capsize=3, markersize=5)
    for kind, style in (("ceiling", ":"), ("floor", "-.")):
        for p in curve.of_kind(kind):
            axes.axhline(p["accuracy"], color="grey", linestyle=style, label=f"{kind} ({p['detail']}) {p['accuracy']:.2%}")
    axes.set_xlabel("head usage of the gated layers (fraction of heads run)")
    axes.set_ylabel("test accuracy (95% bootstrap CI)")
    axes.set_xlim(-0.02, 1.02)
    axes.set_title(title)
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure
