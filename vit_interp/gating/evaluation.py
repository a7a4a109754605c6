"""What a gate does on a dataset: accuracy and head usage overall, per class, per (layer, head)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from vit_interp.data import ImageDataset, model_batches
from vit_interp.errors import ConfigError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT
from vit_interp.stats import mean_with_ci


@dataclass
class GateEvaluation:
    """Accuracy and usage of a gated model; CIs are percentile-bootstrap 95% over images.

    ``keep_rate[c, i, h]`` is how often head ``h`` of gated layer ``layers[i]`` runs on class ``c``;
    ``head_keep_rate[i, h]`` the same over all images.
    """

    class_names: list[str]
    layers: list[int]
    accuracy: float
    accuracy_ci: tuple[float, float]
    usage: float
    usage_ci: tuple[float, float]
    per_class: list[dict[str, Any]]
    keep_rate: Tensor = field(repr=False)
    head_keep_rate: Tensor = field(repr=False)

    @property
    def layer_usage(self) -> dict[int, float]:
        """Mean keep rate of each gated layer over all images and its heads."""
        return {layer: float(self.head_keep_rate[i].mean()) for i, layer in enumerate(self.layers)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"accuracy": self.accuracy, "accuracy_ci95": list(self.accuracy_ci), "usage": self.usage,
                "usage_ci95": list(self.usage_ci), "layers": self.layers, "per_class": self.per_class,
                "keep_rate_per_class_layer_head": self.keep_rate.tolist(),
                "keep_rate_per_layer_head": self.head_keep_rate.tolist()}

    def to_markdown(self) -> str:
        """Every class: accuracy and usage with CIs; the overall row last."""
        lines = ["| class | n | accuracy | 95% CI | usage | 95% CI |", "|---|---:|---:|---|---:|---|"]
        for row in self.per_class:
            lines.append(f"| {row['name']} | {row['n']} | {row['accuracy']:.2%} | [{row['accuracy_ci95'][0]:.2%}, "
                         f"{row['accuracy_ci95'][1]:.2%}] | {row['usage']:.3f} | [{row['usage_ci95'][0]:.3f}, {row['usage_ci95'][1]:.3f}] |")
        n = sum(row["n"] for row in self.per_class)
        lines.append(f"| **all** | {n} | {self.accuracy:.2%} | [{self.accuracy_ci[0]:.2%}, {self.accuracy_ci[1]:.2%}] | "
                     f"{self.usage:.3f} | [{self.usage_ci[0]:.3f}, {self.usage_ci[1]:.3f}] |")
        return "\n".join(lines)

    def keep_rate_markdown(self) -> str:
        """How often each (gated layer, head) runs: every class, then all images."""
        heads = self.head_keep_rate.shape[-1]
        columns = [f"L{layer}H{h}" for layer in self.layers for h in range(heads)]
        lines = ["| class | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        for c, name in enumerate(self.class_names):
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in self.keep_rate[c].flatten().tolist()) + " |")
        lines.append("| **all** | " + " | ".join(f"{v:.2f}" for v in self.head_keep_rate.flatten().tolist()) + " |")
        return "\n".join(lines)


@torch.no_grad()
def evaluate_gate(model: HookedViT, gate: HeadGate, data: ImageDataset, batch_size: int = 512,
                  n_resamples: int = 1000, progress: bool = True, prefix: Optional[Tensor] = None) -> GateEvaluation:
    """Run ``model`` gated by ``gate`` (eval mode: deterministic decisions) over ``data``.

    ``prefix`` (the residual stream entering the gate's first read block for ``data``, from
    `vit_interp.gating.training.residual_at`) skips recomputing the frozen prefix.
    """
    from vit_interp.gating.training import start_layer

    model.eval()
    predictions, masks = [], []
    if prefix is None:
        batches = model_batches(data.images, model.cfg, model.embed.W_E.device, batch_size, "gated eval", progress)
        start = None
    else:
        if len(prefix) != len(data):
            raise ConfigError(f"prefix has {len(prefix)} rows for {len(data)} images; compute it with residual_at on the same data")
        batches = (prefix[i: i + batch_size] for i in range(0, len(prefix), batch_size))
        start = start_layer(gate)
    with gate.attached(model):
        for inputs in batches:
            predictions.append(model(inputs, start_at_layer=start).argmax(-1).cpu())
            masks.append(torch.stack([gate.last_masks[l] for l in gate.layers], dim=1).cpu())  # [b, layers, heads]
    correct = (torch.cat(predictions) == data.labels).double()
    mask = torch.cat(masks).double()
    usage_per_image = mask.mean(dim=(1, 2))
    per_class, keep_rate = [], []
    for label, name in enumerate(data.class_names):
        mine = data.labels == label
        keep_rate.append(mask[mine].mean(0) if mine.any() else torch.full(mask.shape[1:], float("nan")))
        accuracy, *accuracy_ci = mean_with_ci(correct[mine], n_resamples, seed=1 + label)
        usage, *usage_ci = mean_with_ci(usage_per_image[mine], n_resamples, seed=101 + label)
        per_class.append({"name": name, "n": int(mine.sum()), "accuracy": accuracy, "accuracy_ci95": accuracy_ci,
                          "usage": usage, "usage_ci95": usage_ci})
    accuracy, *accuracy_ci = mean_with_ci(correct, n_resamples)
    usage, *usage_ci = mean_with_ci(usage_per_image, n_resamples, seed=100)
    return GateEvaluation(list(data.class_names), list(gate.layers), accuracy, tuple(accuracy_ci), usage, tuple(usage_ci),
                          per_class, torch.stack(keep_rate).float(), mask.mean(0).float())
