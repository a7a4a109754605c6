"""Latent dashboards drawn from `LatentStatistics`: top images, histogram, class distribution, summary.

Every figure is a `matplotlib.figure.Figure` built without pyplot, so no global figure state or GUI
backend is touched and figures are freed like any other object. Figures read only the saved
statistics plus, for pictures, the dataset they were computed on (checked by fingerprint), so
dashboards can be redrawn later from `LatentStatistics.load` without running the model again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from vit_interp.errors import DataError
from vit_interp.io import save_figure_atomic, save_json_atomic, save_text_atomic
from vit_interp.sae.latent_stats import LatentStatistics, check_labelled, dataset_fingerprint, wilson_lower_bound

_SHARE_COLOR, _FIRE_COLOR, _BOX_COLOR = "#1f77b4", "#ff7f0e", "#d62728"


def _class_colormap(n_classes: int) -> Colormap:
    """One distinct colour per class (a qualitative map cut to ``n_classes``; a continuous one beyond 20)."""
    if n_classes > 20:
        return colormaps["viridis"]
    base = colormaps["tab10" if n_classes <= 10 else "tab20"]
    return ListedColormap(list(base.colors)[:n_classes])


def _check_dataset(stats: LatentStatistics, dataset: Any) -> Any:
    dataset = check_labelled(dataset)
    if len(dataset) != stats.n_images or dataset_fingerprint(dataset) != stats.fingerprint:
        raise DataError(f"dataset {dataset.name or '?'}/{dataset.split or '?'} ({len(dataset)} images) is not the one these "
                        f"statistics were computed on ({stats.dataset_name or '?'}/{stats.split or '?'}, {stats.n_images} "
                        "images); pass that same dataset")
    return dataset


def _show_image(ax: Any, image: np.ndarray) -> None:
    """Dataset pixels are already in [0, 1] (models normalise on the fly), so they display as they are."""
    if image.shape[0] == 3:
        ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1))
    else:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _mark_position(ax: Any, stats: LatentStatistics, position: int, image_hw: tuple[int, int]) -> None:
    """Box the patch where a patch/all-token latent peaked (scaled from model pixels to dataset pixels)."""
    patch = position - stats.n_prefix
    if stats.tokens == "cls" or patch < 0:
        return
    grid_h, grid_w = stats.patch_grid
    row, col = divmod(patch, grid_w)
    scale_h = image_hw[0] / grid_h
    scale_w = image_hw[1] / grid_w
    ax.add_patch(Rectangle((col * scale_w - 0.5, row * scale_h - 0.5), scale_w, scale_h, fill=False,
                           edgecolor=_BOX_COLOR, linewidth=1.5))


def _draw_top_images(panel: Union[Figure, SubFigure], stats: LatentStatistics, dataset: Any, latent: int,
                     n: Optional[int]) -> None:
    n = stats.top_k if n is None else max(1, min(n, stats.top_k))
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    axes = np.atleast_1d(panel.subplots(nrows, ncols, squeeze=False)).ravel()
    for slot, ax in enumerate(axes):
        image_index = int(stats.top_images[latent, slot]) if slot < n else -1
        if image_index < 0:
            ax.set_axis_off()
            continue
        image = dataset.images[image_index].detach().float().cpu().numpy()
        _show_image(ax, image)
        position = int(stats.top_positions[latent, slot])
        _mark_position(ax, stats, position, tuple(image.shape[1:]))
        where = "" if stats.tokens == "cls" else (" @CLS" if position < stats.n_prefix else f" @p{position - stats.n_prefix}")
        label = stats.class_names[int(dataset.labels[image_index])]
        ax.set_title(f"{label}\n{float(stats.top_values[latent, slot]):.3g}{where}", fontsize=7)
    shown = int((stats.top_images[latent, :n] >= 0).sum())
    panel.suptitle(f"top {shown} images of latent {latent}" + ("" if shown else " (never fires)"), fontsize=10)


def _draw_histogram(ax: Any, stats: LatentStatistics, latent: int) -> None:
    counts = stats.hist_counts[latent].numpy()
    edges = stats.hist_edges.numpy()
    n_zero = stats.n_images - int(stats.fire_counts[latent])
    nonzero = np.nonzero(counts)[0]
    if len(nonzero):
        lo, hi = max(0, nonzero[0] - 1), min(len(counts), nonzero[-1] + 2)  # trim the shared grid to this latent
        ax.bar(edges[lo:hi], counts[lo:hi], width=np.diff(edges)[lo:hi], align="edge", log=True, color=_SHARE_COLOR)
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # "20", not "2×10^1", for counts
        ax.yaxis.set_major_formatter(plain)
        # Minor labels only when the counts span under a decade (else they crowd the axis).
        ax.yaxis.set_minor_formatter(plain if counts.max() < 10 * counts[counts > 0].min() else NullFormatter())
    else:
        ax.text(0.5, 0.5, "never fires", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("activation (per image)")
    ax.set_ylabel("images (log)")
    ax.set_title(f"activation histogram: fires on {int(stats.fire_counts[latent])} images ({n_zero} zeros not shown)",
                 fontsize=9)


def _draw_class_distribution(ax: Any, stats: LatentStatistics, latent: int) -> None:
    x = np.arange(stats.n_classes)
    share = stats.class_share[:, latent].nan_to_num(0.0).numpy()
    fired = stats.class_fire_counts[:, latent].double()
    fire_share = (fired / fired.sum().clamp(min=1)).numpy()
    ax.bar(x - 0.2, share, width=0.4, color=_SHARE_COLOR, label="share of activation (class-balanced)")
    ax.bar(x + 0.2, fire_share, width=0.4, color=_FIRE_COLOR, label="share of firing images")
    ax.axhline(1 / stats.n_classes, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, stats.class_names, rotation=60, ha="right", fontsize=7 if stats.n_classes <= 20 else 4)
    ax.set_ylim(0, 1)
    ax.set_title("class distribution", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def top_images_grid(stats: LatentStatistics, dataset: Any, latent: Any, n: Optional[int] = None) -> Figure:
    """The ``n`` (default ``top_k``) images on which ``latent`` is most active, titled class + activation.

    For ``patches``/``all`` statistics the patch where the latent peaked is boxed.
    """
    latent = stats.check_latent(latent)
    dataset = _check_dataset(stats, dataset)
    side = math.ceil(math.sqrt(stats.top_k if n is None else max(1, min(n, stats.top_k))))
    figure = Figure(figsize=(1.4 * side + 0.4, 1.6 * side + 0.6), layout="constrained")
    _draw_top_images(figure, stats, dataset, latent, n)
    return figure


def latent_dashboard(stats: LatentStatistics, dataset: Any, latent: Any) -> Figure:
    """One latent on one figure: top images, activation histogram (log count) and class distribution."""
    latent = stats.check_latent(latent)
    dataset = _check_dataset(stats, dataset)
    figure = Figure(figsize=(13, 6.5), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1.0, 1.1])
    _draw_top_images(left, stats, dataset, latent, None)
    hist_ax, class_ax = right.subplots(2, 1)
    _draw_histogram(hist_ax, stats, latent)
    _draw_class_distribution(class_ax, stats, latent)
    top = int(stats.top_class[latent])
    score = float(stats.selectivity[latent])
    se = float(stats.class_share_se[top, latent])
    in_top, fired = int(stats.class_fire_counts[top, latent]), int(stats.fire_counts[latent])
    verdict = (f"top class {stats.class_names[top]}: score {score:.2f} ± {se:.2f} (chance {1 / stats.n_classes:.2f}), "
               f"{in_top}/{fired} firing images in it (≥ {wilson_lower_bound(in_top, fired):.2f})"
               if not math.isnan(score) else "dead on this dataset")
    figure.suptitle(f"latent {latent} · {stats.hook_name} ({stats.tokens}) · fires on {float(stats.firing_rate[latent]):.2%} "
                    f"of {stats.n_images} {stats.dataset_name} {stats.split} images\n{verdict}", fontsize=11)
    return figure


def summary_figure(stats: LatentStatistics, n_per_class: int = 3, min_firing: int = 10) -> Figure:
    """All latents: firing-rate histogram, score histogram, class × latent heatmap, rate-vs-score scatter.

    The heatmap shows, for each class, its ``n_per_class`` most selective latents (firing on at least
    ``min_firing`` images); each column is that latent's class-balanced activation share.
    """
    figure = Figure(figsize=(13, 9), layout="constrained")
    (rate_ax, score_ax), (heat_ax, scatter_ax) = figure.subplots(2, 2)
    rate = stats.firing_rate.numpy()
    alive = rate > 0
    n_dead = int((~alive).sum())
    if alive.any():
        bins = np.logspace(np.log10(1 / stats.n_images), 0, 31)
        rate_ax.hist(rate[alive], bins=bins, log=True, color=_SHARE_COLOR)
        rate_ax.set_xscale("log")
    rate_ax.set_xlabel("firing rate (fraction of images)")
    rate_ax.set_ylabel("latents (log)")
    rate_ax.set_title(f"firing rate: {n_dead} of {stats.d_sae} latents dead", fontsize=10)

    frequent = stats.fire_counts.numpy() >= max(1, min_firing)
    score = stats.selectivity.numpy()
    chance = 1 / stats.n_classes
    score_ax.hist(score[frequent], bins=np.linspace(chance, 1, 31), color=_SHARE_COLOR)
    score_ax.axvline(chance, color="grey", linestyle="--", linewidth=1)
    score_ax.set_xlabel("selectivity score (share on top class; chance dashed)")
    score_ax.set_ylabel("latents")
    score_ax.set_title(f"class selectivity of the {int(frequent.sum())} latents firing on >= {min_firing} images", fontsize=10)

    groups = [stats.class_selective_latents(c, n_per_class, min_firing, allow_test=True) for c in range(stats.n_classes)]
    columns = [j for group in groups for j in group]
    if columns:
        heat = stats.class_share[:, columns].nan_to_num(0.0).numpy()
        image = heat_ax.imshow(heat, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        heat_ax.set_xticks(range(len(columns)), [str(j) for j in columns], rotation=90, fontsize=6)
        heat_ax.set_yticks(range(stats.n_classes), stats.class_names, fontsize=7 if stats.n_classes <= 20 else 4)
        for boundary in np.cumsum([len(group) for group in groups])[:-1]:  # separate the classes' column groups
            heat_ax.axvline(boundary - 0.5, color="white", linewidth=1)
        figure.colorbar(image, ax=heat_ax, label="share of activation")
    heat_ax.set_xlabel(f"latent (the {n_per_class} most selective per class)")
    heat_ax.set_title("class × latent selectivity", fontsize=10)

    top = stats.top_class.numpy()
    colours = scatter_ax.scatter(rate[frequent], score[frequent], c=top[frequent], cmap=_class_colormap(stats.n_classes),
                                 vmin=-0.5, vmax=stats.n_classes - 0.5, s=8)
    if frequent.any():
        scatter_ax.set_xscale("log")
    if stats.n_classes <= 20:
        bar = figure.colorbar(colours, ax=scatter_ax, ticks=range(stats.n_classes))
        bar.ax.set_yticklabels(stats.class_names, fontsize=7)
    scatter_ax.set_xlabel("firing rate")
    scatter_ax.set_ylabel("selectivity score")
    scatter_ax.set_title("firing rate vs selectivity (colour: top class)", fontsize=10)
    figure.suptitle(f"{stats.d_sae} latents at {stats.hook_name} ({stats.tokens}) over {stats.n_images} "
                    f"{stats.dataset_name} {stats.split} images: {n_dead} dead", fontsize=12)
    return figure


def save_figure(figure: Figure, path: Union[str, Path], dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG via a temporary file and an atomic rename; returns the path."""
    return save_figure_atomic(figure, path, dpi=dpi)


def save_top_images_grid(stats: LatentStatistics, dataset: Any, latent: Any, path: Union[str, Path],
                         n: Optional[int] = None, dpi: int = 100) -> Path:
    """`top_images_grid` written to ``path`` as a PNG."""
    return save_figure(top_images_grid(stats, dataset, latent, n), path, dpi)


def save_latent_dashboard(stats: LatentStatistics, dataset: Any, latent: Any, path: Union[str, Path], dpi: int = 100) -> Path:
    """`latent_dashboard` written to ``path`` as a PNG."""
    return save_figure(latent_dashboard(stats, dataset, latent), path, dpi)


def save_summary_figure(stats: LatentStatistics, path: Union[str, Path], n_per_class: int = 3, min_firing: int = 10,
                        dpi: int = 100) -> Path:
    """`summary_figure` written to ``path`` as a PNG."""
    return save_figure(summary_figure(stats, n_per_class, min_firing), path, dpi)


def save_dashboards(stats: LatentStatistics, dataset: Any, folder: Union[str, Path], latents: Optional[list[int]] = None,
                    min_firing: int = 10, dpi: int = 100) -> list[Path]:
    """A dashboard folder: ``summary.png``, ``selectivity.md`` / ``.json``, and ``latent_{j}.png`` per latent.

    ``latents`` defaults to the most selective latent of each class. Returns the files written.
    """
    folder = Path(folder)
    dataset = _check_dataset(stats, dataset)
    if latents is None:
        latents = list(dict.fromkeys(j for c in range(stats.n_classes)
                                     for j in stats.class_selective_latents(c, 1, min_firing, allow_test=True)))
    table = stats.selectivity_table(min_firing)
    written = [save_summary_figure(stats, folder / "summary.png", min_firing=min_firing, dpi=dpi)]
    save_text_atomic(table.to_markdown() + "\n", folder / "selectivity.md")
    save_json_atomic(table.to_dict(), folder / "selectivity.json")
    written += [folder / "selectivity.md", folder / "selectivity.json"]
    written += [save_latent_dashboard(stats, dataset, j, folder / f"latent_{stats.check_latent(j)}.png", dpi) for j in latents]
    return written
