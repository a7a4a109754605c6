"""Controls for a head gate: random masks at matched usage, fixed head subsets, the floor and the ceiling.

A gate "keeps accuracy at usage u" means something only beside what *any* pruning at usage u does.
Every control here runs on the same images as the gate, from the same cached prefix (the residual
stream entering the first gated block), so only the gated suffix is recomputed per configuration.

- **ceiling**: no head pruned (the dense model).
- **floor**: every gated head pruned.
- **random masks**: each gated layer keeps each head independently with probability equal to the
  gate's usage of that layer (Bernoulli, seeded, averaged over repeats).
- **fixed subsets**: the same heads kept for every image. For one gated layer all ``2^n_heads``
  subsets are evaluated exhaustively (`subset_correctness`); the best subset of each size is chosen
  on a *selection* split and reported on the evaluation split, so the choice does not peek at it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.data import ImageDataset
from vit_interp.errors import ConfigError
from vit_interp.gating.evaluation import GateEvaluation, evaluate_gate
from vit_interp.gating.head_gate import HeadGate, mask_hook_name
from vit_interp.gating.training import residual_at, start_layer
from vit_interp.hooked_vit import HookedViT
from vit_interp.stats import mean_with_ci


def all_subsets(n_heads: int) -> Float[Tensor, "n_subsets n_heads"]:
    """Every 0/1 keep mask over ``n_heads`` heads, ordered by size, then lexicographically (row 0 keeps none)."""
    if not 1 <= n_heads <= 16:
        raise ConfigError(f"exhaustive subset search over {n_heads} heads is not feasible; use at most 16")
    masks = sorted(itertools.product([0.0, 1.0], repeat=n_heads), key=lambda m: (sum(m), [-v for v in m]))
    return torch.tensor(masks)


def suffix_correctness(model: HookedViT, prefix: Tensor, labels: Tensor, start: int,
                       hooks: list[tuple[str, Callable]], batch_size: int = 512) -> Bool[Tensor, " n"]:
    """Per-image correctness of the model run from block ``start`` on cached ``prefix`` with ``hooks``."""
    correct = []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for begin in range(0, len(prefix), batch_size):
            logits = model(prefix[begin: begin + batch_size], start_at_layer=start)
            correct.append((logits.argmax(-1).cpu() == labels[begin: begin + batch_size]))
    return torch.cat(correct)


def fixed_mask_hook(mask: Tensor) -> Callable:
    """A ``hook_head_mask`` hook imposing ``mask``: ``[n_heads]`` (the same heads for every image) or
    ``[batch, n_heads]`` (one mask per image)."""

    def hook(current: Tensor, hook: Any) -> Tensor:
        return current * mask.to(current.dtype)

    return hook


@torch.no_grad()
def subset_correctness(model: HookedViT, layer: int, data: ImageDataset, batch_size: int = 512,
                       prefix: Optional[Tensor] = None, progress: bool = True, subsets: Optional[Tensor] = None,
                       ) -> tuple[Float[Tensor, "n_subsets n_heads"], Bool[Tensor, "n_subsets n"]]:
    """Correctness of every image under every fixed subset of ``layer``'s heads (other layers intact).

    Returns ``(subsets, correct)`` with ``subsets`` from `all_subsets` unless given. Pass ``prefix``
    (the residual stream entering ``layer`` for ``data``, from `residual_at`) to reuse it.
    """
    model.eval()
    if not 0 <= layer < model.cfg.n_layers:
        raise ConfigError(f"layer {layer} is out of range for a model with {model.cfg.n_layers} layers")
    prefix = residual_at(model, data, layer, progress=progress) if prefix is None else prefix
    subsets = all_subsets(model.cfg.n_heads) if subsets is None else subsets
    rows = []
    for mask in tqdm(subsets, desc=f"fixed subsets of layer {layer}", disable=not progress, leave=False):
        rows.append(suffix_correctness(model, prefix, data.labels, layer,
                                        [(mask_hook_name(layer), fixed_mask_hook(mask.to(prefix.device)))], batch_size))
    return subsets, torch.stack(rows)


def _bernoulli_hook(keep_probability: float, generator: torch.Generator) -> Callable:
    def hook(current: Tensor, hook: Any) -> Tensor:
        draws = torch.rand(current.shape, generator=generator) < keep_probability
        return current * draws.to(current.dtype).to(current.device)

    return hook


@torch.no_grad()
def random_mask_correctness(model: HookedViT, usage_per_layer: dict[int, float], data: ImageDataset,
                            n_repeats: int = 5, seed: int = 0, batch_size: int = 512, prefix: Optional[Tensor] = None,
                            progress: bool = True) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """Random Bernoulli head masks at the given keep rate per layer: per-image accuracy and usage,
    each averaged over ``n_repeats`` seeded draws."""
    if not usage_per_layer:
        raise ConfigError("usage_per_layer is empty; give {layer: keep probability} for at least one layer")
    for layer, usage in usage_per_layer.items():
        if not 0 <= layer < model.cfg.n_layers or not 0 <= usage <= 1:
            raise ConfigError(f"bad random-mask setting layer {layer}: usage {usage}; layers 0..{model.cfg.n_layers - 1}, usage in [0, 1]")
    model.eval()
    start = min(usage_per_layer)
    prefix = residual_at(model, data, start, progress=progress) if prefix is None else prefix
    generator = torch.Generator().manual_seed(seed)
    kept: dict[int, list[Tensor]] = {}
    correct = torch.zeros(len(data), dtype=torch.float64)
    usage = torch.zeros(len(data), dtype=torch.float64)
    for _ in tqdm(range(n_repeats), desc="random masks", disable=not progress, leave=False):
        hooks = []
        for layer, p in usage_per_layer.items():
            bernoulli = _bernoulli_hook(p, generator)

            def record(current: Tensor, hook: Any, bernoulli: Callable = bernoulli, layer: int = layer) -> Tensor:
                mask = bernoulli(current, hook)
                kept.setdefault(layer, []).append(mask.cpu())
                return mask

            hooks.append((mask_hook_name(layer), record))
        kept.clear()
        correct += suffix_correctness(model, prefix, data.labels, start, hooks, batch_size).double()
        usage += torch.stack([torch.cat(kept[l]).double().mean(-1) for l in usage_per_layer]).mean(0)
    return correct / n_repeats, usage / n_repeats


@dataclass
class ControlRow:
    """One configuration: accuracy and usage overall (with 95% bootstrap CIs) and per class."""

    name: str
    accuracy: float
    accuracy_ci: tuple[float, float]
    usage: float
    per_class_accuracy: list[float]
    detail: str = ""


@dataclass
class GateControls:
    """A gate beside its controls on the same evaluation images (see the module docstring)."""

    class_names: list[str]
    rows: list[ControlRow]
    gate: GateEvaluation = field(repr=False)

    def row(self, name: str) -> ControlRow:
        """The row called ``name`` (``ceiling``, ``gate``, ``random masks``, ``floor``, ...)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"class_names": self.class_names,
                "rows": [{"name": r.name, "accuracy": r.accuracy, "accuracy_ci95": list(r.accuracy_ci), "usage": r.usage,
                          "per_class_accuracy": r.per_class_accuracy, "detail": r.detail} for r in self.rows]}

    def to_markdown(self) -> str:
        """Overall table (accuracy with CI, usage), then every class's accuracy under every control."""
        lines = ["| configuration | accuracy | 95% CI | head usage | note |", "|---|---:|---|---:|---|"]
        for r in self.rows:
            lines.append(f"| {r.name} | {r.accuracy:.2%} | [{r.accuracy_ci[0]:.2%}, {r.accuracy_ci[1]:.2%}] | {r.usage:.3f} | {r.detail} |")
        lines += ["", "| class | " + " | ".join(r.name for r in self.rows) + " |", "|---|" + "---:|" * len(self.rows)]
        for c, name in enumerate(self.class_names):
            lines.append(f"| {name} | " + " | ".join(f"{r.per_class_accuracy[c]:.1%}" for r in self.rows) + " |")
        return "\n".join(lines)


def _row(name: str, correct: Tensor, labels: Tensor, n_classes: int, usage: float, detail: str = "", seed: int = 0) -> ControlRow:
    accuracy, *ci = mean_with_ci(correct.double(), seed=seed)
    per_class = [float(correct[labels == c].double().mean()) if (labels == c).any() else float("nan") for c in range(n_classes)]
    return ControlRow(name, accuracy, tuple(ci), usage, per_class, detail)


@torch.no_grad()
def gate_controls(model: HookedViT, gate: HeadGate, test: ImageDataset, selection: Optional[ImageDataset] = None,
                  n_random: int = 5, seed: int = 0, batch_size: int = 512, progress: bool = True) -> GateControls:
    """Evaluate ``gate`` on ``test`` beside the ceiling, the floor, random masks at the gate's per-layer
    usage and — for a gate on a single layer, when a ``selection`` split is given — the best fixed
    subsets with the whole numbers of heads just below and above the gate's usage, chosen on
    ``selection``."""
    gate.check_compatible(model)
    start = start_layer(gate)
    prefix = residual_at(model, test, start, progress=progress)
    evaluation = evaluate_gate(model, gate, test, batch_size=batch_size, progress=progress, prefix=prefix)
    labels, k = test.labels, test.n_classes
    rows = [_row("ceiling (no pruning)", suffix_correctness(model, prefix, labels, start, [], batch_size), labels, k, 1.0)]
    rows.append(ControlRow("gate", evaluation.accuracy, evaluation.accuracy_ci, evaluation.usage,
                           [row["accuracy"] for row in evaluation.per_class], f"layers {gate.layers}"))
    correct, usage = random_mask_correctness(model, evaluation.layer_usage, test, n_random, seed, batch_size, prefix, progress)
    rows.append(_row("random masks", correct, labels, k, float(usage.mean()),
                     f"Bernoulli per layer at the gate's usage, mean of {n_random} draws"))
    if len(gate.layers) == 1 and selection is not None:
        # The gate's usage times n_heads is rarely a whole number: bracket it with the sizes below and above.
        layer, n_heads = gate.layers[0], model.cfg.n_heads
        sizes = sorted({math.floor(evaluation.usage * n_heads), math.ceil(evaluation.usage * n_heads)})
        subsets = all_subsets(n_heads)
        subsets = subsets[torch.isin(subsets.sum(-1), torch.tensor(sizes, dtype=subsets.dtype))]
        subsets, chosen_on = subset_correctness(model, layer, selection, batch_size, progress=progress, subsets=subsets)
        for size, best in best_subset_of_each_size(subsets, chosen_on, sizes).items():
            heads = subsets[best].nonzero().squeeze(1).tolist()
            correct = suffix_correctness(model, prefix, labels, start,
                                         [(mask_hook_name(layer), fixed_mask_hook(subsets[best].to(prefix.device)))], batch_size)
            rows.append(_row(f"best fixed subset, {size} heads", correct, labels, k, size / n_heads,
                             f"heads {heads} of layer {layer}, best of size {size} on {selection.split}"))
    floor_hooks = [(mask_hook_name(layer), fixed_mask_hook(torch.zeros(model.cfg.n_heads, device=prefix.device)))
                   for layer in gate.layers]
    rows.append(_row("floor (gated heads all pruned)", suffix_correctness(model, prefix, labels, start, floor_hooks, batch_size),
                     labels, k, 0.0))
    return GateControls(list(test.class_names), rows, evaluation)


def best_subset_of_each_size(subsets: Float[Tensor, "n_subsets n_heads"], correct: Bool[Tensor, "n_subsets n"],
                             sizes: Sequence[int]) -> dict[int, int]:
    """For each size (number of kept heads), the row of ``subsets`` with the highest accuracy in ``correct``."""
    best = {}
    for size in sizes:
        candidates = (subsets.sum(-1) == size).nonzero().squeeze(1)
        best[size] = int(candidates[correct[candidates].double().mean(-1).argmax()])
    return best
