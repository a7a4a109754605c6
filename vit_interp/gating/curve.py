"""Accuracy against head usage: one gate per target usage, beside random masks and fixed subsets.

For each target γ a gate is trained on the training split (the frozen prefix is computed once for
all of them) and evaluated on the test split; at the usage the gate *reaches*, random Bernoulli
masks are evaluated on the same test images. For a gate on one layer, the best fixed subset of every
size (chosen on the selection split, reported on test) gives the static-pruning curve.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from vit_interp.data import ImageDataset
from vit_interp.errors import ConfigError
from vit_interp.gating.baselines import (
    fixed_mask_hook,
    suffix_correctness,
    best_subset_of_each_size,
    random_mask_correctness,
    subset_correctness,
)
from vit_interp.gating.evaluation import evaluate_gate
from vit_interp.gating.head_gate import HeadGate, mask_hook_name
from vit_interp.gating.training import GateTrainConfig, residual_at, start_layer, train_gate
from vit_interp.hooked_vit import HookedViT
from vit_interp.stats import mean_with_ci

DEFAULT_TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class UsageCurve:
    """Points of the accuracy-vs-usage curve; accuracies with 95% bootstrap CIs over test images.

    ``points`` has one row per configuration with keys ``kind`` (``gate``, ``random``, ``fixed``,
    ``ceiling``, ``floor``), ``target`` (gates), ``usage``, ``accuracy``, ``ci_low``, ``ci_high``,
    ``detail``.
    """

    points: list[dict[str, Any]]
    gates: dict[float, HeadGate] = field(default_factory=dict, repr=False)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The points of one kind, in order."""
        return [p for p in self.points if p["kind"] == kind]

    def to_csv(self) -> str:
        """All points as CSV."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["kind", "target", "usage", "accuracy", "ci_low", "ci_high", "detail"])
        writer.writeheader()
        writer.writerows(self.points)
        return out.getvalue()

    def to_markdown(self) -> str:
        """One row per point."""
        lines = ["| kind | target | usage | accuracy | 95% CI | detail |", "|---|---:|---:|---:|---|---|"]
        for p in self.points:
            target = "" if p["target"] is None else f"{p['target']:.2f}"
            lines.append(f"| {p['kind']} | {target} | {p['usage']:.3f} | {p['accuracy']:.2%} | "
                         f"[{p['ci_low']:.2%}, {p['ci_high']:.2%}] | {p['detail']} |")
        return "\n".join(lines)


def _point(kind: str, usage: float, correct: torch.Tensor, target: Optional[float] = None, detail: str = "",
           seed: int = 0) -> dict[str, Any]:
    accuracy, low, high = mean_with_ci(correct.double(), seed=seed)
    return {"kind": kind, "target": target, "usage": usage, "accuracy": accuracy, "ci_low": low, "ci_high": high,
            "detail": detail}


def usage_curve(model: HookedViT, train: ImageDataset, test: ImageDataset, selection: Optional[ImageDataset] = None,
                targets: Sequence[float] = DEFAULT_TARGETS, preset: str = "final",
                config: Optional[GateTrainConfig] = None, n_random: int = 5, seed: int = 0, batch_size: int = 512,
                progress: bool = True) -> UsageCurve:
    """Train one ``preset`` gate per target usage and evaluate it beside its controls (module docstring).

    ``config`` supplies the training settings (its ``target_usage`` is replaced by each target);
    backbone fine-tuning is refused here because every gate must see the same model.
    """
    targets = [float(t) for t in targets]
    if not targets or any(not 0 < t <= 1 for t in targets):
        raise ConfigError(f"targets must be a non-empty list of usages in (0, 1], got {targets}")
    config = config or GateTrainConfig(epochs=3, lr=3e-3)
    if config.finetune_backbone:
        raise ConfigError("usage_curve compares gates on one frozen model; use finetune_backbone=False")
    model.eval()
    probe = HeadGate.preset(preset, model.cfg)
    first = start_layer(probe)
    train_prefix = residual_at(model, train, first, progress=progress)
    test_prefix = residual_at(model, test, first, progress=progress)
    labels = test.labels
    points = [_point("ceiling", 1.0, suffix_correctness(model, test_prefix, labels, first, [], batch_size),
                     detail="no pruning")]
    floor_hooks = [(mask_hook_name(l), fixed_mask_hook(torch.zeros(model.cfg.n_heads, device=test_prefix.device)))
                   for l in probe.layers]
    points.append(_point("floor", 0.0, suffix_correctness(model, test_prefix, labels, first, floor_hooks, batch_size),
                         detail="every gated head pruned"))
    gates: dict[float, HeadGate] = {}
    for i, target in enumerate(tqdm(targets, desc="targets", disable=not progress)):
        torch.manual_seed(seed + i)  # the decision networks' initialisation
        gate = HeadGate.preset(preset, model.cfg, tau=probe.tau)
        settings = GateTrainConfig(**{**config.__dict__, "target_usage": target, "seed": seed + i})
        train_gate(model, gate, train, settings, progress=False, prefix=train_prefix)
        evaluation = evaluate_gate(model, gate, test, batch_size=batch_size, progress=False, prefix=test_prefix)
        gates[target] = gate
        points.append({"kind": "gate", "target": target, "usage": evaluation.usage, "accuracy": evaluation.accuracy,
                       "ci_low": evaluation.accuracy_ci[0], "ci_high": evaluation.accuracy_ci[1],
                       "detail": f"{preset} gate trained at target {target:.2f}"})
        correct, usage = random_mask_correctness(model, evaluation.layer_usage, test, n_random, seed + 100 + i,
                                                 batch_size, test_prefix, progress=False)
        points.append(_point("random", float(usage.mean()), correct, target,
                             f"Bernoulli masks at the gate's per-layer usage, {n_random} draws"))
    if len(probe.layers) == 1 and selection is not None:
        layer = probe.layers[0]
        subsets, chosen_on = subset_correctness(model, layer, selection, batch_size, progress=progress)
        _, on_test = subset_correctness(model, layer, test, batch_size, prefix=test_prefix, progress=progress)
        sizes = list(range(1, model.cfg.n_heads))
        for size, row in best_subset_of_each_size(subsets, chosen_on, sizes).items():
            heads = subsets[row].nonzero().squeeze(1).tolist()
            points.append(_point("fixed", size / model.cfg.n_heads, on_test[row],
                                 detail=f"heads {heads} of layer {layer}, best of size {size} on {selection.split}"))
    return UsageCurve(points, gates)
