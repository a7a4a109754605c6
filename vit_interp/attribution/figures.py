"""Heatmaps of attributions: latents → heads of a gated layer, and heads → classes (direct logit attribution)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

from vit_interp.attribution.head_class import HeadClassDLA
from vit_interp.attribution.checks import check_latent
from vit_interp.attribution.latent_head import LatentHeadAttribution
from vit_interp.errors import ConfigError


def _diverging() -> Any:
    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")  # NaN: no variance


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _annotate(axes: Any, values: np.ndarray, limit: float, fmt: str) -> None:
    for (i, j), v in np.ndenumerate(values):
        if math.isfinite(v):
            axes.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7,
                      color="white" if abs(v) > 0.6 * limit else "black")


def latent_row_labels(latents: Sequence[int], stats: Any = None) -> list[str]:
    """``"latent 12"``, or ``"12 · Sandal (0.83)"`` (top class and its selectivity score) with a `LatentStatistics`."""
    if stats is None:
        return [f"latent {j}" for j in latents]
    top, score = stats.top_class, stats.selectivity
    labels = []
    for j in latents:
        name = stats.class_names[int(top[j])] if math.isfinite(float(score[j])) else "never fires"
        labels.append(f"{j} · {name} ({float(score[j]):.2f})" if math.isfinite(float(score[j])) else f"{j} · {name}")
    return labels


def latent_head_heatmap(
    result: LatentHeadAttribution,
    n: int = 20,
    latents: Optional[Sequence[int]] = None,
    stats: Any = None,
    class_: Any = None,
    title: Optional[str] = None,
) -> Figure:
    """Latents × heads of the gated layer, diverging colours (red: pushes the head on, blue: off).

    Args:
        result: A `LatentHeadAttribution`.
        n: Show the ``n`` latents with the largest ``|value|`` on any head (ignored with ``latents``).
        latents: Explicit latents to show, in this order.
        stats: Optional `vit_interp.sae.LatentStatistics` of the same SAE: rows are labelled with each
            latent's top class and selectivity score.
        class_: Show the matrix of one attributed class instead of all images.
        title: Figure title (default: method, layer, images).
    """
    values_all = result.values(class_)
    if latents is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be a positive integer, got {n!r}")
        strength = values_all.abs().nan_to_num(-1.0).amax(dim=1)
        fired = torch.nonzero((result.fire_counts > 0) & (strength >= 0)).flatten()
        rows = fired[torch.argsort(strength[fired], descending=True, stable=True)][:n].tolist()
    else:
        rows = [check_latent(j, result.d_sae) for j in latents]
    if stats is not None and getattr(stats, "d_sae", None) != result.d_sae:
        raise ConfigError(f"the latent statistics have d_sae={getattr(stats, 'd_sae', '?')} but the attribution "
                          f"{result.d_sae}; pass the statistics of the same SAE")
    values = values_all[rows].numpy() if rows else np.zeros((0, result.n_heads))
    limit = _limit(values)
    figure = Figure(figsize=(2.8 + 0.75 * result.n_heads, 1.2 + 0.32 * max(len(rows), 1)))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap=_diverging(), vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(result.n_heads), result.head_labels)
    axes.set_yticks(range(len(rows)), latent_row_labels(rows, stats))
    if values.size and values.size <= 400:
        _annotate(axes, values, limit, ".2g")
    figure.colorbar(image, ax=axes, label=result.description, shrink=0.9)
    where = f", class {class_}" if class_ is not None else ""
    axes.set_title(title or f"{result.method}: latents → layer {result.layer} heads "
                            f"({result.n_images} {result.split or ''} images{where})", fontsize=10)
    axes.set_xlabel("head of the gated layer")
    figure.tight_layout()
    return figure


def head_class_heatmap(dla: HeadClassDLA, title: Optional[str] = None, when_kept: bool = False) -> Figure:
    """Heads × classes direct logit attribution (mean contribution to each class's own logit).

    Under a gate each cell also shows the head's keep rate for the class; ``when_kept=True`` shows
    the mean over the images where the head ran instead of over all of the class's images.
    """
    matrix = (dla.head_dla_when_kept if when_kept else dla.head_dla).numpy()
    limit = _limit(matrix)
    n_classes = len(dla.class_names)
    figure = Figure(figsize=(2.4 + 0.75 * n_classes, 1.6 + 0.45 * dla.n_heads))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap=_diverging(), vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(n_classes), dla.class_names, rotation=45 if n_classes > 4 else 0, ha="right" if n_classes > 4 else "center")
    axes.set_yticks(range(dla.n_heads), dla.head_labels)
    if matrix.size <= 300:
        for (h, c), v in np.ndenumerate(matrix):
            text = f"{v:.2f}" if math.isfinite(v) else "–"
            if dla.keep_rate is not None:
                text += f"\n({float(dla.keep_rate[h, c]):.2f})"
            axes.text(c, h, text, ha="center", va="center", fontsize=6.5,
                      color="white" if math.isfinite(v) and abs(v) > 0.6 * limit else "black")
    label = "DLA, images where kept" if when_kept else "direct logit attribution"
    figure.colorbar(image, ax=axes, label=label, shrink=0.9)
    gated = "; gated, keep rate in brackets" if dla.keep_rate is not None else ""
    axes.set_title(title or f"layer {dla.layer} heads → own-class logit\n(mean over each class's {dla.split or ''} "
                            f"images{gated})", fontsize=10)
    figure.tight_layout()
    return figure
