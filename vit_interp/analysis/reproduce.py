"""The whole pipeline on one model, gate and SAE: per-class steering circuits, controls, attribution, a report.

`reproduce` is what ``vit-interp reproduce`` runs after loading (or retraining) the three parts. It
writes into ``out``: ``report.md`` (tables, figures, the settings and what is our design), CSV/JSON
of every table, and PNG figures. Latent choices use the training split only, α is chosen on the
validation split, and every reported number is on the test split.
"""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from vit_interp.analysis.circuits import CircuitSettings, CircuitsTable, per_class_circuits
from vit_interp.analysis.steering_figures import before_after_figure, dose_response_figure, kept_heads_heatmap
from vit_interp.attribution import head_class_dla, head_class_heatmap, latent_head_attributions
from vit_interp.data import ImageDataset
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_figure_atomic, save_json_atomic, save_text_atomic
from vit_interp.sae.latent_stats import latent_statistics
from vit_interp.steering.sweep import SweepEngine

logger = logging.getLogger(__name__)


@dataclass
class ReproduceSettings:
    """How much of each split the pipeline uses, and the circuit protocol.

    Args:
        stats_images: Training images for the latent statistics (latent choice); None: all.
        attribution_images: Validation images for the latent → head attribution; None: all.
        dla_images: Test images for the head → class direct logit attribution; None: all.
        circuits: The per-class protocol (`CircuitSettings`).
    """

    stats_images: Optional[int] = 20000
    attribution_images: Optional[int] = 2000
    dla_images: Optional[int] = 2000
    circuits: CircuitSettings = field(default_factory=CircuitSettings)


def _head(data: ImageDataset, n: Optional[int]) -> ImageDataset:
    return data if n is None or n >= len(data) else data.head(n)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


@torch.no_grad()
def reproduce(model: HookedViT, gate: HeadGate, sae: Any, train: ImageDataset, val: ImageDataset, test: ImageDataset,
              out: str | Path, settings: Optional[ReproduceSettings] = None, names: Optional[dict[str, str]] = None,
              command: str = "", progress: bool = True) -> dict[str, Any]:
    """Run per-class steering with controls and the attributions; write the report into ``out``.

    Returns a JSON-ready summary (also written as ``summary.json``).
    """
    settings = settings or ReproduceSettings()
    names = names or {}
    out = Path(out)
    figures = out / "figures"
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - start - sum(timings.values()), 2)

    model.eval()
    stats = latent_statistics(model, sae, _head(train, settings.stats_images), progress=progress)
    lap("latent statistics (train)")
    val_engine = SweepEngine(model, gate, sae, val, progress=progress)
    test_engine = SweepEngine(model, gate, sae, test, progress=progress)
    lap("sweep engines (val, test)")
    table = per_class_circuits(val_engine, test_engine, stats, settings.circuits, progress=progress)
    lap("per-class circuits and controls")

    attributions = latent_head_attributions(model, sae, gate, _head(val, settings.attribution_images), progress=progress)
    lap("latent -> head attribution (val)")
    with model.saes([sae], use_error_term=True, tokens="cls"):
        dla = head_class_dla(model, _head(test, settings.dla_images), table.layer, gate=gate, progress=progress)
    lap("head -> class DLA (test)")

    save_text_atomic(table.to_csv(), out / "circuits.csv")
    save_json_atomic(table.to_dict(), out / "circuits.json")
    save_figure_atomic(before_after_figure(table), figures / "before_after.png")
    save_figure_atomic(kept_heads_heatmap(table), figures / "kept_heads.png")
    save_figure_atomic(dose_response_figure(table), figures / "dose_response.png")
    for method, result in attributions.items():
        save_text_atomic(result.to_csv(), out / f"latent_head_{method}.csv")
        save_figure_atomic(result.heatmap(stats=stats), figures / f"latent_head_{method}.png")
    save_text_atomic(dla.to_csv(), out / "head_class_dla.csv")
    save_figure_atomic(head_class_heatmap(dla), figures / "head_class_dla.png")
    lap("writing")
    summary = {
        "command": command, "names": names, "layer": table.layer,
        "splits": {"train_for_latents": min(len(train), settings.stats_images or len(train)), "val": len(val), "test": len(test)},
        "settings": {"stats_images": settings.stats_images, "attribution_images": settings.attribution_images,
                     "dla_images": settings.dla_images, "circuits": settings.circuits.__dict__},
        "timings_s": timings, "total_s": round(time.perf_counter() - start, 1), "peak_rss_gb": round(_peak_rss_gb(), 2),
        "torch_threads": torch.get_num_threads(),
    }
    save_json_atomic(summary, out / "summary.json")
    save_text_atomic(_report(table, attributions, dla, summary), out / "report.md")
    return summary


def _report(table: CircuitsTable, attributions: dict[str, Any], dla: Any, summary: dict[str, Any]) -> str:
    s = table.settings
    names = summary["names"]
    floor_limited = [r.name for r in table.rows if "floor" in r.note]
    steered = [r for r in table.rows if r.alpha != 1.0]
    lines = [
        "# Steering SAE latents to control dynamic head pruning — report", "",
        f"Model `{names.get('model', '?')}`, gate `{names.get('gate', '?')}` (layer {table.layer}), SAE `{names.get('sae', '?')}`.",
        "", "```", summary["command"], "```", "",
        "## Protocol (our design; the paper gives only its abstract)", "",
        f"- For each class, its {s.n_latents} most class-selective SAE latents (class share of mean activation, firing on "
        f"≥ {s.min_class_rate:.0%} of the class's images) are chosen on {summary['splits']['train_for_latents']} **training** images.",
        f"- Those latents are scaled by α ∈ {{{', '.join(f'{a:g}' for a in s.alphas)}}} on the class's **validation** images "
        f"(target `{s.target}`: the steered reconstruction + error term feeds only the gate); the chosen α gives the lowest "
        f"head usage whose validation accuracy is ≥ the unsteered one − {s.tolerance:.0%} (α = 1 if none).",
        f"- Everything below is on the **test** split ({summary['splits']['test']} images): 95% percentile-bootstrap CIs over "
        "images, Δ paired per image.",
        f"- Controls on the same images: {s.n_random} draws of random latents matched in count and mean activation on the class "
        f"(same α); {s.n_random} draws of random head masks at the steered usage; the best fixed head subset of the same size "
        "(exhaustive over all subsets, chosen on validation); the floor (every gated head pruned) and ceiling (none); "
        "off-target effects (the class's steering applied to every other class).", "",
        "## Per-class steering", "", table.to_markdown(), "",
        f"Steered (α ≠ 1): {len(steered)} of {len(table.rows)} classes. "
        + (f"Floor ≈ ceiling (within {s.floor_margin:.0%}) for: {', '.join(floor_limited)} — for these classes a compact head "
           "subset keeping accuracy says little about the heads." if floor_limited else "No class has floor ≈ ceiling."),
        "", "![before and after](figures/before_after.png)", "", "![kept heads](figures/kept_heads.png)", "",
        "![dose response](figures/dose_response.png)", "",
        "## Attribution", "",
        "Latent → head matrices on validation images (rows: the latents with the largest attributions):", "",
    ]
    for method in attributions:
        lines += [f"![{method}](figures/latent_head_{method}.png)", ""]
    for method, result in attributions.items():
        lines += [f"Top latents per head, {method}:", "", result.to_markdown(), ""]
    lines += ["Head → class direct logit attribution of the gated layer's heads on test images (gated, SAE spliced with "
              "the error term, so identical to the unspliced gated model):", "", "![dla](figures/head_class_dla.png)", "",
              "## Cost", "", f"Total {summary['total_s']} s, peak RSS {summary['peak_rss_gb']} GB, "
              f"{summary['torch_threads']} torch threads.", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {step} | {seconds} |" for step, seconds in summary["timings_s"].items()]
    return "\n".join(lines) + "\n"
