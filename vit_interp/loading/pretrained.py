"""Saved HookedViT models: a folder with ``model.safetensors`` + ``config.json`` (+ a model card).

Models shipped inside the package live in ``vit_interp/pretrained/<name>/`` and load by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file

from vit_interp.config import ViTConfig
from vit_interp.errors import ConfigError
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_tensors_atomic, save_text_atomic
from vit_interp.weight_processing import fold_layer_norm

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "card.json"
CARD_MARKDOWN_FILE = "README.md"


def shipped(files: tuple[str, ...]) -> list[str]:
    """Names of the folders in ``vit_interp/pretrained/`` that hold all of ``files`` (models, gates, SAEs)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(d.name for d in PRETRAINED_DIR.iterdir() if all((d / f).is_file() for f in files))


def resolve_folder(name_or_path: Union[str, Path], files: tuple[str, ...], kind: str) -> Path:
    """A folder holding ``files``, or the name of a shipped one; otherwise a one-line `ConfigError` about ``kind``."""
    path = Path(name_or_path)
    if all((path / f).is_file() for f in files):
        return path
    names = shipped(files)
    if str(name_or_path) in names:
        return PRETRAINED_DIR / str(name_or_path)
    raise ConfigError(f"no {kind} {str(name_or_path)!r}: not a shipped {kind} ({names or 'none shipped'}) and not a "
                      f"folder with {' and '.join(files)}")


def available_models() -> list[str]:
    """Names of the models shipped with vit-interp (loadable offline by name)."""
    return shipped((CONFIG_FILE, WEIGHTS_FILE))


def resolve_model_dir(name_or_path: Union[str, Path]) -> Path:
    """A shipped model's name, or a folder written by `save_pretrained` / ``vit-interp train``."""
    return resolve_folder(name_or_path, (CONFIG_FILE, WEIGHTS_FILE), "model")


def save_pretrained(model: HookedViT, directory: Union[str, Path], card: Optional[dict[str, Any]] = None) -> Path:
    """Write a model folder (weights, config, optional card) atomically, file by file."""
    directory = Path(directory)
    save_tensors_atomic(model.state_dict(), directory / WEIGHTS_FILE)
    save_json_atomic(model.cfg.to_dict() | {"device": None}, directory / CONFIG_FILE)
    if card is not None:
        save_json_atomic(card, directory / CARD_FILE)
        save_text_atomic(card_markdown(card, directory.name), directory / CARD_MARKDOWN_FILE)
    return directory


def card_markdown(card: dict[str, Any], name: str) -> str:
    """A short human-readable model card, generated from ``card.json`` (so the numbers cannot drift)."""
    cfg, test, training = card.get("config", {}), card.get("test", {}), card.get("training", {})
    lines = [f"# {name}", ""]
    if card.get("description"):
        lines += [card["description"], ""]
    lines += ["## How it was made", "", f"```\n{card.get('command', '?')}\n```", ""]
    lines.append(f"Seed {card.get('seed')}; trained for {training.get('train_seconds', 0) / 60:.1f} min on "
                 f"{training.get('device', '?')} ({training.get('torch_threads', '?')} threads, torch {training.get('torch', '?')}).")
    dataset = card.get("dataset", {})
    lines += ["", f"Data: {dataset.get('name')} — {dataset.get('n_train')} training, {dataset.get('n_val')} validation "
              f"(held out, split seed {dataset.get('split_seed')}), {dataset.get('n_test')} test images."]
    for file, digest in dataset.get("files_sha256", {}).items():
        lines.append(f"- `{file}` sha256 `{digest}`")
    lines += ["", "## Architecture", "",
              f"{cfg.get('n_layers')} layers, {cfg.get('n_heads')} heads of width {cfg.get('d_head')}, d_model "
              f"{cfg.get('d_model')}, MLP {cfg.get('d_mlp')}, patch {cfg.get('patch_size')} on {cfg.get('image_size')} images "
              f"({cfg.get('in_channels')} channel(s)), {cfg.get('pool')} pooling."]
    if card.get("rationale"):
        lines += ["", card["rationale"]]
    if test:
        lines += ["", "## Test accuracy", "", f"Overall **{test['accuracy']:.2%}** (95% bootstrap CI "
                  f"[{test['ci95'][0]:.2%}, {test['ci95'][1]:.2%}], n = {test['n']}).", "",
                  "| class | n | accuracy | 95% CI |", "|---|---:|---:|---|"]
        for row in test.get("per_class", []):
            lines.append(f"| {row['name']} | {row['n']} | {row['accuracy']:.2%} | [{row['ci_low']:.2%}, {row['ci_high']:.2%}] |")
    history = training.get("history", [])
    if history:
        lines += ["", "## Training curve", "", "| epoch | loss | train acc | val acc |", "|---:|---:|---:|---:|"]
        for h in history:
            lines.append(f"| {h['epoch']} | {h['loss']:.4f} | {h['train_accuracy']:.2%} | {h.get('val_accuracy', float('nan')):.2%} |")
    return "\n".join(lines) + "\n"


def load_pretrained(
    name_or_path: Union[str, Path], device: Optional[Union[str, torch.device]] = None, fold_ln: bool = False
) -> HookedViT:
    """Load a shipped model by name, or a saved model folder, in eval mode."""
    directory = resolve_model_dir(name_or_path)
    cfg = ViTConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    state = load_file(str(directory / WEIGHTS_FILE))
    if fold_ln:
        state, cfg = fold_layer_norm(state, cfg)
    cfg = cfg.replace(device=str(device) if device is not None else None, seed=None)
    model = HookedViT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_card(name_or_path: Union[str, Path]) -> dict[str, Any]:
    """The model card (``card.json``) of a shipped or saved model; empty if it has none."""
    path = resolve_model_dir(name_or_path) / CARD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
