"""SAEs on disk in sae-lens' own format (``cfg.json`` + ``sae_weights.safetensors``), plus an optional card.

`save_sae` writes through sae-lens' ``save_inference_model`` / ``save_model``, so plain
``sae_lens.SAE.load_from_disk(path)`` loads the folder unchanged. `load_sae` loads any such folder, or
an SAE shipped in ``vit_interp/pretrained/<name>/`` by name, and checks it against a model.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from vit_interp.errors import ConfigError, DataError
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_text_atomic
from vit_interp.loading.pretrained import resolve_folder, shipped

logger = logging.getLogger(__name__)

SAE_CONFIG_FILE = "cfg.json"  # sae-lens' file names (sae_lens.constants)
SAE_WEIGHTS_FILE = "sae_weights.safetensors"
CARD_FILE = "card.json"
CARD_MARKDOWN_FILE = "README.md"

PathLike = Union[str, "os.PathLike[str]"]


def available_saes() -> list[str]:
    """Names of the SAEs shipped with vit-interp (folders in ``vit_interp/pretrained/`` holding an SAE)."""
    return shipped((SAE_CONFIG_FILE, SAE_WEIGHTS_FILE))


def resolve_sae_dir(name_or_path: Any) -> Path:
    """A folder holding an SAE in sae-lens format, or the name of a shipped SAE."""
    return resolve_folder(name_or_path, (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE), "SAE")


def save_sae(sae: Any, path: PathLike, card: Optional[dict[str, Any]] = None) -> Path:
    """Save ``sae`` into folder ``path`` in sae-lens format, plus ``card.json`` and ``README.md`` if ``card``.

    A training SAE is saved in inference form (``save_inference_model``: BatchTopK/Matryoshka become
    JumpReLU, TopK decoder norms are folded), an inference SAE with ``save_model``. sae-lens writes
    into a temporary sibling folder; each file is then renamed into place, so no file is ever half
    written.

    Returns:
        ``path``.
    """
    from sae_lens import SAE, TrainingSAE

    if not isinstance(sae, SAE):
        raise ConfigError(f"save_sae needs a sae-lens SAE, got {type(sae).__name__}")
    if sae.cfg.metadata.hook_name is None:
        logger.warning("saving an SAE without cfg.metadata.hook_name; set it so the SAE can be checked and attached")
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.resolve().parent, prefix=f".{target.resolve().name}.") as tmp:
        if isinstance(sae, TrainingSAE):
            sae.save_inference_model(tmp)
        else:
            sae.save_model(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for name in (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE):
            os.chmod(Path(tmp) / name, 0o666 & ~umask)  # sae-lens' safetensors writer may create 0600 files
            os.replace(Path(tmp) / name, target / name)
    if card is not None:
        save_json_atomic(card, target / CARD_FILE)
        save_text_atomic(card_markdown(card, target.name), target / CARD_MARKDOWN_FILE)
    return target


def load_sae(name_or_path: Any, model: Optional[HookedViT] = None, device: Union[str, torch.device, None] = None) -> Any:
    """Load an SAE in sae-lens format (a folder, or a shipped SAE by name) as its inference class.

    With ``model``, also check the SAE fits it (`check_sae_fits`).

    Args:
        name_or_path: A shipped SAE name (see `available_saes`) or a folder with ``cfg.json`` and
            ``sae_weights.safetensors``.
        model: Optional model the SAE will be used with.
        device: Where to put the SAE (default: the model's device, else CPU).
    """
    from sae_lens import SAE

    directory = resolve_sae_dir(name_or_path)
    if device is None:
        device = model.embed.W_E.device if model is not None else "cpu"
    try:
        sae = SAE.load_from_disk(directory, device=str(device))
    except (KeyError, ValueError, TypeError, json.JSONDecodeError, OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot load the SAE in {directory} with sae-lens ({type(error).__name__}: {detail}); "
                        "save it with save_sae or sae-lens' save_inference_model") from error
    if model is not None:
        check_sae_fits(sae, model)
    return sae


def check_sae_fits(sae: Any, model: HookedViT) -> None:
    """Raise a one-line error unless ``sae`` names a hook of ``model`` whose width is the SAE's ``d_in``.

    Raises:
        ConfigError: no ``cfg.metadata.hook_name``, or ``d_in`` differs from the hook's width.
        UnknownHookError: the hook does not exist on ``model``.
    """
    from vit_interp.sae.harvest import model_fingerprint

    hook_name = sae.cfg.metadata.hook_name
    if not hook_name:
        raise ConfigError("the SAE has no cfg.metadata.hook_name, so it cannot be matched to a hook; set it, e.g. "
                          "sae.cfg.metadata.hook_name = 'blocks.5.hook_resid_pre', and save it again")
    model.check_hook_name(hook_name)
    width = _hook_width(model, hook_name, sae.cfg.reshape_activations)
    if sae.cfg.d_in != width:
        raise ConfigError(f"SAE d_in {sae.cfg.d_in} does not match the width {width} of {hook_name!r} on this model; "
                          "the SAE was trained on another model or hook")
    stored = sae.cfg.metadata.get("model_weights_sha256")
    if stored is not None and stored != model_fingerprint(model)["weights_sha256"]:
        logger.warning("the SAE was trained on activations of a model with other weights (fingerprint differs)")


@torch.no_grad()
def _hook_width(model: HookedViT, hook_name: str, reshape: str) -> int:
    from vit_interp.sae.harvest import stop_layer

    cfg = model.cfg
    probe = torch.zeros(1, cfg.in_channels, *cfg.image_size, dtype=cfg.dtype, device=model.embed.W_E.device)
    shape: list[int] = []
    model.run_with_hooks(probe, fwd_hooks=[(hook_name, lambda act, hook: shape.extend(act.shape))],
                         stop_at_layer=stop_layer(model, hook_name))
    # sae-lens' "hook_z" reshape flattens [.., heads, d_head] into one row of width heads * d_head.
    return shape[-1] * shape[-2] if reshape == "hook_z" and len(shape) >= 2 else shape[-1]


def card_markdown(card: dict[str, Any], name: str) -> str:
    """A short human-readable card for an SAE folder, generated from ``card.json``."""
    lines = [f"# {name}", "", "A sparse autoencoder in sae-lens format: load it with "
             "`vit_interp.sae.load_sae(path, model)` or `sae_lens.SAE.load_from_disk(path)`.", ""]
    if card.get("command"):
        lines += ["## How it was made", "", f"```\n{card['command']}\n```", ""]
    facts = {key: card[key] for key in ("model", "hook_name", "tokens", "dataset", "n_train_images", "seed") if key in card}
    lines += [f"- {key}: `{value}`" for key, value in facts.items()]
    settings = card.get("settings") or {}
    if settings:
        lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in settings.items()]
    test = card.get("test")
    if test:
        lines += ["", "## Test metrics", "", metrics_markdown(test)]
    if card.get("test_spliced"):
        from vit_interp.sae.metrics import SAEEvaluation

        gate = f", gated by `{card['gate']}`" if card.get("gate") else ""
        lines += ["", "## Spliced into the model (test split)", "",
                  f"The reconstruction replaces the activation at the {card.get('tokens', '?')} token(s), no error "
                  f"term{gate}; accuracies with 95% bootstrap CIs (Δ paired over images).", "",
                  SAEEvaluation.from_dict(card["test_spliced"]).to_markdown()]
    return "\n".join(lines) + "\n"


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Reconstruction metrics (`reconstruction_metrics`) as a markdown table."""
    return "\n".join([
        "| rows | explained variance | MSE | L0 | dead fraction |", "|---:|---:|---:|---:|---:|",
        f"| {metrics['n_rows']} | {metrics['explained_variance']:.4f} | {metrics['mse']:.6g} | {metrics['l0']:.2f} "
        f"| {metrics['dead_fraction']:.3f} |",
    ])
