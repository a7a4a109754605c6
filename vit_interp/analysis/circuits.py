"""Per-class steering circuits: steer each class's own SAE latents, read off the heads it keeps, beside controls.

For every class ``c`` (our protocol; the paper's abstract gives only its outcome):

1. **Latents** — the ``n_latents`` most class-selective latents of ``c`` (`LatentStatistics`
   computed on the *training* split).
2. **α** — each scale factor of the grid is applied to those latents on ``c``'s *validation*
   images; the chosen α gives the lowest head usage whose validation accuracy is at least the
   unsteered validation accuracy minus ``tolerance`` (α = 1, no steering, when none qualifies).
3. **Report on test** — accuracy and usage of ``c``'s test images before and after, paired
   differences, the kept head subset (mode mask and how often it occurs), bootstrap 95% CIs.
4. **Controls on the same test images** — random latents matched in count and in mean activation on
   ``c`` (scaled by the same α); random head masks at the steered usage; the best fixed head subset
   of the same size as the mode mask, chosen on validation; the floor (every gated head pruned) and
   the ceiling (none pruned) — where they are within ``floor_margin`` of each other the class barely
   needs the gated heads and a "compact subset keeps accuracy" finding says nothing; off-target
   effects (``c``'s steering applied to every other class's images).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.errors import ConfigError
from vit_interp.sae.latent_stats import LatentStatistics
from vit_interp.stats import mean_with_ci
from vit_interp.steering.spec import SteeringSpec
from vit_interp.steering.sweep import SweepEngine

DEFAULT_ALPHAS = (0.25, 0.5, 2.0, 4.0, 8.0, 16.0)


@dataclass
class CircuitSettings:
    """Settings of `per_class_circuits` (see the module docstring)."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    n_latents: int = 3
    min_class_rate: float = 0.2
    tolerance: float = 0.01
    n_random: int = 5
    target: str = "gate"
    floor_margin: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ConfigError(f"alphas must be positive scale factors, got {self.alphas}")
        if self.n_latents <= 0 or self.n_random <= 0:
            raise ConfigError("n_latents and n_random must be positive")


def _ci(values: Tensor, seed: int) -> dict[str, float]:
    mean, low, high = mean_with_ci(values.double(), seed=seed)
    return {"mean": mean, "low": low, "high": high}


def matched_random_latents(stats: LatentStatistics, class_index: int, chosen: list[int], generator: torch.Generator,
                           pool: int = 5) -> list[int]:
    """As many random latents as ``chosen``, each drawn among the ``pool`` latents (not chosen, not dead)
    whose mean activation on the class is closest to the chosen latent's: scaling a latent that is off
    on an image changes nothing, so a fair control matches activation, not just count."""
    means = stats.class_means[class_index].nan_to_num(0.0)
    alive = stats.fire_counts > 0
    taken = set(chosen)
    picks = []
    for j in chosen:
        candidates = [int(i) for i in torch.argsort((means - means[j]).abs()).tolist() if alive[i] and int(i) not in taken]
        pick = candidates[int(torch.randint(min(pool, len(candidates)), (1,), generator=generator))]
        taken.add(pick)
        picks.append(pick)
    return picks


@dataclass
class ClassCircuit:
    """One class's row of the table (all numbers on test unless named ``val``)."""

    name: str
    n_test: int
    latents: list[int]
    alpha: float
    val_curve: list[dict[str, float]]
    baseline_accuracy: dict[str, float]
    baseline_usage: dict[str, float]
    steered_accuracy: dict[str, float]
    steered_usage: dict[str, float]
    delta_accuracy: dict[str, float]
    delta_usage: dict[str, float]
    mode_mask: list[int]
    mode_share: float
    keep_rate_before: list[float]
    keep_rate_after: list[float]
    controls: dict[str, Any]
    note: str = ""


@dataclass
class CircuitsTable:
    """Every class's circuit, in class order."""

    rows: list[ClassCircuit]
    settings: CircuitSettings
    layer: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"layer": self.layer, "settings": self.settings.__dict__, "rows": [r.__dict__ for r in self.rows], **self.extra}

    def to_csv(self) -> str:
        """One line per class with the headline numbers and controls."""
        out = io.StringIO()
        fields = ["class", "n_test", "latents", "alpha", "baseline_accuracy", "baseline_usage", "steered_accuracy",
                  "steered_usage", "delta_accuracy", "delta_accuracy_low", "delta_accuracy_high", "kept_heads", "kept_share",
                  "random_latents_accuracy", "random_latents_usage", "random_masks_accuracy", "fixed_subset_accuracy",
                  "ceiling_accuracy", "floor_accuracy", "off_target_delta_accuracy", "off_target_delta_usage", "note"]
        writer = csv.writer(out)
        writer.writerow(fields)
        for r in self.rows:
            c = r.controls
            writer.writerow([r.name, r.n_test, " ".join(map(str, r.latents)), r.alpha, r.baseline_accuracy["mean"],
                             r.baseline_usage["mean"], r.steered_accuracy["mean"], r.steered_usage["mean"],
                             r.delta_accuracy["mean"], r.delta_accuracy["low"], r.delta_accuracy["high"],
                             " ".join(map(str, r.mode_mask)), r.mode_share, c["random_latents"]["accuracy"],
                             c["random_latents"]["usage"], c["random_masks"]["accuracy"], c["fixed_subset"]["accuracy"]["mean"],
                             c["ceiling"]["mean"], c["floor"]["mean"], c["off_target"]["delta_accuracy"],
                             c["off_target"]["delta_usage"], r.note])
        return out.getvalue()

    def to_markdown(self) -> str:
        """Two tables: steering per class, then its controls."""
        def pct(d: dict[str, float]) -> str:
            return f"{d['mean']:.1%} [{d['low']:.1%}, {d['high']:.1%}]"

        def pp(d: dict[str, float]) -> str:
            return f"{d['mean'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"

        lines = ["| class | latents | α | accuracy before → after | Δ acc (pp) | usage before → after | Δ usage | kept heads (share) | note |",
                 "|---|---|---:|---|---|---|---|---|---|"]
        for r in self.rows:
            kept = "".join(f"h{h}" if on else "" for h, on in enumerate(r.mode_mask)) or "none"
            lines.append(f"| {r.name} | {r.latents} | {r.alpha:g} | {r.baseline_accuracy['mean']:.1%} → {pct(r.steered_accuracy)} | "
                         f"{pp(r.delta_accuracy)} | {r.baseline_usage['mean']:.2f} → {r.steered_usage['mean']:.2f} | "
                         f"{r.delta_usage['mean']:+.2f} [{r.delta_usage['low']:+.2f}, {r.delta_usage['high']:+.2f}] | "
                         f"{kept} ({r.mode_share:.0%}) | {r.note} |")
        lines += ["", "| class | steered | random latents (matched; mean, usage range over draws) | random masks (same usage) | best fixed subset (same size) | "
                  "ceiling | floor | off-target Δ acc / Δ usage |", "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            c = r.controls
            fixed = c["fixed_subset"]
            lines.append(f"| {r.name} | {r.steered_accuracy['mean']:.1%} @ {r.steered_usage['mean']:.2f} | "
                         f"{c['random_latents']['accuracy']:.1%} @ {c['random_latents']['usage']:.2f} "
                         f"(usage {c['random_latents']['usage_range'][0]:.2f}–{c['random_latents']['usage_range'][1]:.2f}) | "
                         f"{c['random_masks']['accuracy']:.1%} @ {c['random_masks']['usage']:.2f} | "
                         f"{fixed['accuracy']['mean']:.1%} (heads {fixed['heads']}) | {c['ceiling']['mean']:.1%} | {c['floor']['mean']:.1%} | "
                         f"{c['off_target']['delta_accuracy'] * 100:+.1f} pp / {c['off_target']['delta_usage']:+.2f} |")
        return "\n".join(lines)


@torch.no_grad()
def per_class_circuits(val: SweepEngine, test: SweepEngine, stats: LatentStatistics,
                       settings: Optional[CircuitSettings] = None, progress: bool = True) -> CircuitsTable:
    """Steer every class's own latents and report the heads it keeps beside the controls (module docstring).

    ``val`` and ``test`` are sweep engines of the same system on the validation and test splits;
    ``stats`` must come from the training split.
    """
    settings = settings or CircuitSettings()
    if stats.split == "test":
        raise ConfigError("latent statistics of the test split would leak it into the choice of latents; use the train split")
    if val.table is None or test.table is None:
        raise ConfigError("per-class circuits need the engines' mask tables (at most 10 heads in the gated layer)")
    generator = torch.Generator().manual_seed(settings.seed)
    n_heads = test.n_heads
    subsets = test.subsets
    val_base, test_base = val.run(None), test.run(None)
    val_subset_correct = (val.table.argmax(-1) == val.data.labels)  # [n_masks, n_val]
    test_subset_correct = (test.table.argmax(-1) == test.data.labels)
    rows = []
    for c, name in enumerate(tqdm(test.data.class_names, desc="classes", disable=not progress)):
        val_rows, test_rows = val.class_rows(c), test.class_rows(c)
        latents = stats.class_selective_latents(c, settings.n_latents, min_class_rate=settings.min_class_rate)
        if not latents:
            latents = stats.class_selective_latents(c, settings.n_latents)
        base_acc = float(val_base.correct[val_rows].double().mean())
        curve = [{"alpha": 1.0, "accuracy": base_acc, "usage": float(val_base.usage[val_rows].mean())}]
        for alpha in settings.alphas:
            result = val.run(SteeringSpec(latents, "scale", alpha, settings.target), rows=val_rows)
            curve.append({"alpha": alpha, "accuracy": float(result.correct[val_rows].double().mean()),
                          "usage": float(result.usage[val_rows].mean())})
        eligible = [p for p in curve if p["accuracy"] >= base_acc - settings.tolerance]
        chosen = min(eligible, key=lambda p: (round(p["usage"], 6), abs(p["alpha"] - 1)))
        alpha = chosen["alpha"]
        spec = SteeringSpec(latents, "scale", alpha, settings.target)
        steered = test.run(spec, rows=test_rows)
        before_correct, after_correct = test_base.correct[test_rows], steered.correct[test_rows]
        before_usage, after_usage = test_base.usage[test_rows], steered.usage[test_rows]
        masks = steered.masks[test_rows].round().long()
        mode, count = Counter(tuple(m) for m in masks.tolist()).most_common(1)[0]
        seed = 1000 * (c + 1)

        # Controls ---------------------------------------------------------------------------------
        random_acc, random_usage = [], []
        for _ in range(settings.n_random):
            picks = matched_random_latents(stats, c, latents, generator)
            control = test.run(SteeringSpec(picks, "scale", alpha, settings.target), rows=test_rows)
            random_acc.append(float(control.correct[test_rows].double().mean()))
            random_usage.append(float(control.usage[test_rows].mean()))
        p_keep = float(after_usage.mean())
        mask_acc = []
        labels = test.data.labels[test_rows]
        for _ in range(settings.n_random):
            random_masks = (torch.rand(int(test_rows.sum()), n_heads, generator=generator) < p_keep).float()
            full = torch.ones(len(test.data), n_heads)
            full[test_rows] = random_masks
            mask_acc.append(float((test.logits_under(full)[test_rows].argmax(-1) == labels).double().mean()))
        size = sum(mode)
        same_size = (subsets.sum(-1) == size).nonzero().squeeze(1)
        best = int(same_size[val_subset_correct[same_size][:, val_rows].double().mean(-1).argmax()])
        ceiling_row, floor_row = len(subsets) - 1, 0
        others = ~test_rows
        off = test.run(spec, rows=others)
        ceiling = _ci(test_subset_correct[ceiling_row][test_rows], seed + 7)
        floor = _ci(test_subset_correct[floor_row][test_rows], seed + 8)
        notes = []
        if ceiling["mean"] - floor["mean"] < settings.floor_margin:
            notes.append("floor ≈ ceiling: this class barely needs the gated heads")
        if alpha == 1.0:
            notes.append("no α kept validation accuracy at lower usage: not steered")
        rows.append(ClassCircuit(
            name=name, n_test=int(test_rows.sum()), latents=latents, alpha=alpha, val_curve=curve,
            baseline_accuracy=_ci(before_correct, seed), baseline_usage=_ci(before_usage, seed + 1),
            steered_accuracy=_ci(after_correct, seed + 2), steered_usage=_ci(after_usage, seed + 3),
            delta_accuracy=_ci(after_correct.double() - before_correct.double(), seed + 4),
            delta_usage=_ci(after_usage.double() - before_usage.double(), seed + 5),
            mode_mask=list(mode), mode_share=count / len(masks),
            keep_rate_before=test_base.masks[test_rows].mean(0).tolist(), keep_rate_after=steered.masks[test_rows].float().mean(0).tolist(),
            controls={
                "random_latents": {"accuracy": sum(random_acc) / len(random_acc), "usage": sum(random_usage) / len(random_usage),
                                   "accuracy_range": [min(random_acc), max(random_acc)],
                                   "usage_range": [min(random_usage), max(random_usage)], "n_draws": settings.n_random},
                "random_masks": {"accuracy": sum(mask_acc) / len(mask_acc), "usage": p_keep, "n_draws": settings.n_random},
                "fixed_subset": {"heads": subsets[best].nonzero().squeeze(1).tolist(),
                                 "accuracy": _ci(test_subset_correct[best][test_rows], seed + 6)},
                "ceiling": ceiling, "floor": floor,
                "off_target": {"delta_accuracy": float((off.correct[others].double() - test_base.correct[others].double()).mean()),
                               "delta_usage": float((off.usage[others] - test_base.usage[others]).mean())},
            },
            note="; ".join(notes)))
    return CircuitsTable(rows, settings, test.layer)
