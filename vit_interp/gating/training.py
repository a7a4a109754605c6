"""Training a head gate: CE + λ·|mean usage − target| (AdaViT's head loss).

By default the backbone is frozen, so everything before the first gated layer is computed once for
the whole training set and each epoch runs only the gated suffix (``start_at_layer``). With
``finetune_backbone`` the backbone trains jointly (its own learning rate) and every step runs the
whole model on the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.data import ImageDataset, model_batches, prepare
from vit_interp.errors import ConfigError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT


@dataclass
class GateTrainConfig:
    """Settings of `train_gate`.

    Args:
        target_usage: Wanted mean keep rate over images, gated layers and heads, in (0, 1].
        usage_weight: λ of the usage term (AdaViT: 2.0).
        epochs: Passes over the training set.
        batch_size: Images per step.
        lr: AdamW learning rate of the decision networks.
        seed: Seeds shuffling and the Gumbel noise.
        finetune_backbone: Also train the model's weights (AdaViT fine-tunes jointly); the frozen
            prefix can then no longer be cached.
        backbone_lr: AdamW learning rate of the model's weights when fine-tuning.
    """

    target_usage: float = 0.5
    usage_weight: float = 2.0
    epochs: int = 5
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    finetune_backbone: bool = False
    backbone_lr: float = 1e-4

    def __post_init__(self) -> None:
        if not 0 < self.target_usage <= 1:
            raise ConfigError(f"target_usage must be in (0, 1], got {self.target_usage}; 1 keeps every head")
        if self.epochs <= 0 or self.batch_size <= 0 or not self.lr > 0 or not self.backbone_lr > 0:
            raise ConfigError(f"epochs, batch_size, lr and backbone_lr must be positive, got epochs={self.epochs}, "
                              f"batch_size={self.batch_size}, lr={self.lr}, backbone_lr={self.backbone_lr}")
        if self.usage_weight < 0:
            raise ConfigError(f"usage_weight must be >= 0, got {self.usage_weight}")


def start_layer(gate: HeadGate) -> int:
    """The first block the gate needs to see run: the earliest block any of its read hooks sits in."""
    blocks = []
    for name in gate.read_hooks.values():
        parts = name.split(".")
        blocks.append(int(parts[1]) if parts[0] == "blocks" else 0)
    return min(blocks)


@torch.no_grad()
def residual_at(model: HookedViT, data: ImageDataset, layer: int, batch_size: int = 512, progress: bool = True
                ) -> Float[Tensor, "n pos d_model"]:
    """The residual stream entering block ``layer`` for every image (the frozen prefix, run once)."""
    model.eval()
    batches = model_batches(data.images, model.cfg, model.embed.W_E.device, batch_size, f"prefix to layer {layer}", progress)
    chunks = [model(images, stop_at_layer=layer) for images in batches]
    return torch.cat(chunks)


def train_gate(
    model: HookedViT, gate: HeadGate, train: ImageDataset, config: GateTrainConfig, progress: bool = True,
    prefix: Optional[Tensor] = None,
) -> list[dict[str, Any]]:
    """Train ``gate``'s decision networks (and, with ``finetune_backbone``, ``model``); return
    per-epoch loss, usage and training accuracy.

    With a frozen backbone the model's parameters are left untouched (their ``requires_grad`` is
    restored either way); the model is returned to eval mode, where the gate decides
    deterministically. ``prefix`` (from `residual_at` at `start_layer(gate)`) reuses a frozen prefix
    computed earlier, e.g. when training several gates on one model.
    """
    gate.check_compatible(model)
    device = model.embed.W_E.device
    if config.finetune_backbone:
        first = 0
        inputs = train.images  # prepared batch by batch: the whole model runs every step
    else:
        first = start_layer(gate)
        inputs = residual_at(model, train, first, progress=progress) if prefix is None else prefix
        if inputs.shape[:1] != train.labels.shape:
            raise ConfigError(f"prefix has {inputs.shape[0]} rows for {len(train)} training images; compute it with "
                              f"residual_at(model, train, {first})")
    labels = train.labels.to(device)
    gate.to(device)
    frozen = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(config.finetune_backbone)
    groups = [{"params": list(gate.parameters()), "lr": config.lr}]
    if config.finetune_backbone:
        groups.append({"params": list(model.parameters()), "lr": config.backbone_lr})
    optimizer = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(config.seed)
    gate.generator = torch.Generator().manual_seed(config.seed + 1)
    steps = math.ceil(len(train) / config.batch_size)
    history: list[dict[str, Any]] = []
    grad_was_enabled = torch.is_grad_enabled()
    try:
        torch.set_grad_enabled(True)  # restored below: callers may have turned gradients off globally
        model.train()  # the gate samples while the model is in train mode
        with gate.attached(model):
            for epoch in tqdm(range(config.epochs), desc="gate epochs", disable=not progress):
                order = torch.randperm(len(train), generator=generator)
                total_loss = total_usage = total_correct = 0.0
                for step in range(steps):
                    index = order[step * config.batch_size: (step + 1) * config.batch_size]
                    if config.finetune_backbone:
                        logits = model(prepare(inputs[index].to(device), model.cfg))
                    else:
                        logits = model(inputs[index], start_at_layer=first)
                    usage = gate.usage()
                    loss = F.cross_entropy(logits, labels[index]) + config.usage_weight * (usage - config.target_usage).abs()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total_loss += loss.item() * len(index)
                    total_usage += usage.item() * len(index)
                    total_correct += (logits.argmax(-1) == labels[index]).sum().item()
                history.append({"epoch": epoch + 1, "loss": total_loss / len(train), "usage": total_usage / len(train),
                                "train_accuracy": total_correct / len(train)})
    finally:
        torch.set_grad_enabled(grad_was_enabled)
        model.eval()
        gate.generator = None
        for name, p in model.named_parameters():
            p.requires_grad_(frozen[name])
    return history
