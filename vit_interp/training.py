"""Train and evaluate a `HookedViT` classifier.

Training is deterministic on a CPU: every epoch's shuffling and augmentation come from a generator
seeded by ``(seed, epoch)``, and a checkpoint (weights, AdamW state, history) is written atomically
after every epoch, so a resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.config import ViTConfig
from vit_interp.data import ImageDataset, augment, model_batches, prepare
from vit_interp.errors import ConfigError
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_tensors_atomic
from vit_interp.stats import mean_with_ci

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
# Matrices get weight decay; biases, norms, position embedding and extra tokens do not (ViT practice).
_DECAYED = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_E", "W_U", "W_U_dist")


@dataclass
class TrainConfig:
    """Optimisation settings (AdamW, linear warm-up then cosine decay to zero, label smoothing).

    Args:
        epochs: Passes over the training set.
        batch_size: Images per step.
        lr: Peak learning rate.
        weight_decay: AdamW decoupled weight decay (matrices only).
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        label_smoothing: Cross-entropy label smoothing.
        max_shift: Augmentation: random translation up to this many pixels (0: none).
        flip: Augmentation: random horizontal flips.
        grad_clip: Clip the global gradient norm to this (0: no clipping).
        seed: Seeds shuffling and augmentation.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    max_shift: int = 2
    flip: bool = True
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


@dataclass
class ClassAccuracy:
    """Accuracy on one class with its bootstrap 95% CI."""

    name: str
    n: int
    accuracy: float
    ci_low: float
    ci_high: float


@dataclass
class Evaluation:
    """Overall and per-class accuracy with bootstrap 95% CIs (resampling test images)."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    per_class: list[ClassAccuracy]
    predictions: Tensor = field(repr=False)
    labels: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-image predictions)."""
        return {
            "accuracy": self.accuracy, "ci95": [self.ci_low, self.ci_high], "n": self.n,
            "per_class": [dataclasses.asdict(c) for c in self.per_class],
        }

    def to_markdown(self) -> str:
        """A per-class table, every class listed, with the overall row last."""
        lines = ["| class | n | accuracy | 95% CI |", "|---|---:|---:|---|"]
        for c in self.per_class:
            lines.append(f"| {c.name} | {c.n} | {c.accuracy:.2%} | [{c.ci_low:.2%}, {c.ci_high:.2%}] |")
        lines.append(f"| **all** | {self.n} | {self.accuracy:.2%} | [{self.ci_low:.2%}, {self.ci_high:.2%}] |")
        return "\n".join(lines)


def _device_of(model: HookedViT) -> torch.device:
    return model.embed.W_E.device


@torch.no_grad()
def predict(model: HookedViT, data: ImageDataset, batch_size: int = 512, progress: bool = True) -> Tensor:
    """Logits ``[n, n_classes]`` for every image (prepared with `vit_interp.data.prepare`)."""
    model.eval()
    batches = model_batches(data.images, model.cfg, _device_of(model), batch_size, "predict", progress)
    outputs = [model(images).float().cpu() for images in batches]
    return torch.cat(outputs) if outputs else torch.zeros(0, model.cfg.n_classes)


def evaluate(
    model: HookedViT, data: ImageDataset, batch_size: int = 512, n_resamples: int = 1000, seed: int = 0, progress: bool = True
) -> Evaluation:
    """Accuracy overall and for every class, with percentile-bootstrap 95% CIs over the images."""
    if data.n_classes != model.cfg.n_classes:
        raise ConfigError(
            f"dataset {data.name!r} has {data.n_classes} classes but the model {model.cfg.n_classes}; "
            "evaluate on the dataset the model was trained for"
        )
    predictions = predict(model, data, batch_size, progress).argmax(dim=-1)
    correct = (predictions == data.labels).double()
    accuracy, low, high = mean_with_ci(correct, n_resamples, seed=seed)
    per_class = [
        ClassAccuracy(name, int((data.labels == label).sum()), *mean_with_ci(correct[data.labels == label], n_resamples, seed=seed + 1 + label))
        for label, name in enumerate(data.class_names)
    ]
    return Evaluation(accuracy, low, high, len(data), per_class, predictions, data.labels)


def _param_groups(model: HookedViT, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if name.rsplit(".", 1)[-1] in _DECAYED else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _save_checkpoint(path: Path, model: HookedViT, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_state = optimizer.state_dict()
    for index, slots in optim_state["state"].items():
        for key, value in slots.items():
            tensors[f"optim.{index}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    meta = {"state": json.dumps(state), "param_groups": json.dumps(optim_state["param_groups"])}
    save_tensors_atomic(tensors, path, metadata=meta)


def _load_checkpoint(path: Path, model: HookedViT, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": json.loads(meta["param_groups"])})
    return json.loads(meta["state"])


def train_classifier(
    model: HookedViT,
    train: ImageDataset,
    config: TrainConfig,
    val: Optional[ImageDataset] = None,
    out_dir: Optional[Union[str, Path]] = None,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` in place; return the per-epoch history (loss, train and validation accuracy).

    With ``out_dir``, a checkpoint is written atomically after every epoch to
    ``out_dir/checkpoint.safetensors``; ``resume=True`` continues from it (same settings required).
    """
    if train.n_classes != model.cfg.n_classes:
        raise ConfigError(
            f"training set has {train.n_classes} classes but the model {model.cfg.n_classes}; build the model "
            f"with n_classes={train.n_classes}"
        )
    device = _device_of(model)
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = max(1, round(config.warmup_epochs * steps_per_epoch))
    # What must match for a resume to continue the same run (the init seed no longer matters then).
    architecture = model.cfg.to_dict() | {"device": None, "seed": None}
    settings = {"train": dataclasses.asdict(config), "model": architecture, "n_train": len(train)}

    history: list[dict[str, Any]] = []
    start_epoch, elapsed = 0, 0.0
    checkpoint = Path(out_dir) / CHECKPOINT_FILE if out_dir is not None else None
    if resume:
        if checkpoint is None or not checkpoint.is_file():
            raise ConfigError(f"nothing to resume: {checkpoint} does not exist; drop --resume to start a new run")
        state = _load_checkpoint(checkpoint, model, optimizer)
        if state["settings"] != json.loads(json.dumps(settings)):
            raise ConfigError(
                f"{checkpoint} was written with different settings; resume with the same arguments or use a new --out"
            )
        start_epoch, history, elapsed = state["epoch"], state["history"], state["train_seconds"]
        logger.info("resuming from epoch %d of %d", start_epoch, config.epochs)

    for epoch in tqdm(range(start_epoch, config.epochs), desc="epochs", disable=not progress,
                      initial=start_epoch, total=config.epochs):
        began = time.perf_counter()
        model.train()
        generator = _epoch_generator(config.seed, epoch)
        order = torch.randperm(len(train), generator=generator)
        total_loss, total_correct = 0.0, 0
        batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
        for batch in batches:
            index = order[batch * config.batch_size: (batch + 1) * config.batch_size]
            images = train.images[index]
            if config.max_shift or config.flip:
                images = augment(images, generator, config.max_shift, config.flip)
            images, labels = prepare(images.to(device), model.cfg), train.labels[index].to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + batch, total_steps, warmup_steps, config.lr)
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total_loss += loss.item() * len(index)
            total_correct += int((logits.argmax(-1) == labels).sum())
            batches.set_postfix(loss=f"{loss.item():.3f}")
        elapsed += time.perf_counter() - began
        record = {"epoch": epoch + 1, "loss": total_loss / len(train), "train_accuracy": total_correct / len(train)}
        if val is not None:
            record["val_accuracy"] = float((predict(model, val, progress=False).argmax(-1) == val.labels).double().mean())
        history.append(record)
        logger.info("epoch %s", record)
        if checkpoint is not None:
            state = {"epoch": epoch + 1, "history": history, "train_seconds": elapsed, "settings": settings}
            _save_checkpoint(checkpoint, model, optimizer, state)
            save_json_atomic(state, checkpoint.with_name("train_state.json"))
    model.eval()
    return history


def default_model_config(data: ImageDataset, seed: int = 0) -> ViTConfig:
    """The project's default classifier for a dataset: 6 layers, 6 heads of width 16, d_model 96,
    MLP 384, patch 4 (see the shipped model card for why), normalised with the dataset's statistics."""

    channels, height, width = data.image_shape
    mean = data.images.mean(dim=(0, 2, 3))
    std = data.images.std(dim=(0, 2, 3))
    return ViTConfig(
        n_layers=6, d_model=96, n_heads=6, d_mlp=384, image_size=(height, width), patch_size=4,
        in_channels=channels, n_classes=data.n_classes, class_names=list(data.class_names),
        image_mean=[round(float(m), 4) for m in mean], image_std=[round(float(s), 4) for s in std], seed=seed,
    )


def model_card(
    model: HookedViT,
    config: TrainConfig,
    out_dir: Union[str, Path],
    command: str,
    dataset: str,
    train: ImageDataset,
    val: ImageDataset,
    test_result: Evaluation,
    split_seed: int = 0,
    data_root: Optional[Union[str, Path]] = None,
) -> dict[str, Any]:
    """Everything needed to reproduce and judge a trained model: command, seed, data hashes,
    config, training curve and time (from the run's ``train_state.json``), per-class test accuracy."""
    import hashlib
    import platform

    from vit_interp.data.fashion_mnist import fashion_mnist_files

    state = json.loads((Path(out_dir) / "train_state.json").read_text())
    files = fashion_mnist_files(data_root) if dataset == "fashion-mnist" else []
    return {
        "command": command,
        "seed": config.seed,
        "dataset": {
            "name": dataset, "n_train": len(train), "n_val": len(val), "n_test": test_result.n, "split_seed": split_seed,
            "files_sha256": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
        },
        "config": model.cfg.to_dict() | {"device": None},
        "training": {
            "settings": dataclasses.asdict(config), "history": state["history"], "train_seconds": state["train_seconds"],
            "device": str(model.cfg.device), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "test": test_result.to_dict(),
    }
