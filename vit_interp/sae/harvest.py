"""Activations of a `HookedViT` hook over a dataset, with explicit token selection.

``tokens`` says which positions become SAE training rows: ``"cls"`` (position 0, one row per image),
``"patches"`` (every patch token, prefix tokens excluded) or ``"all"`` (every position).
The forward pass stops at the hooked block (``stop_at_layer``): the rest of the model never runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional, Union

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from vit_interp.data import model_batches
from vit_interp.errors import ConfigError
from vit_interp.hooked_vit import HookedViT

TOKEN_CHOICES = ("cls", "patches", "all")


def check_tokens(tokens: Any) -> str:
    """``tokens`` if it is one of `TOKEN_CHOICES`, else a one-line `ConfigError`."""
    if tokens not in TOKEN_CHOICES:
        raise ConfigError(f"unknown token selection {tokens!r}; choose one of {list(TOKEN_CHOICES)}")
    return tokens


def n_prefix_tokens(model: HookedViT) -> int:
    """CLS + distillation + register tokens: the positions before the first patch."""
    cfg = model.cfg
    return int(cfg.class_token) + int(cfg.distill_token) + cfg.n_register_tokens


def stop_layer(model: HookedViT, hook_name: str) -> Optional[int]:
    """The ``stop_at_layer`` that still runs ``hook_name`` (None: the whole model must run)."""
    model.check_hook_name(hook_name)
    parts = hook_name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    if parts[0] in ("hook_embed", "hook_pos_embed", "ln_pre"):
        return 0
    return None


def select_tokens(activations: Float[Tensor, "batch pos d"], tokens: str, n_prefix: int) -> Float[Tensor, "rows d"]:
    """Rows for the SAE: ``cls`` → ``[batch, d]``; ``patches`` / ``all`` → ``[batch * positions, d]``."""
    check_tokens(tokens)
    if activations.ndim != 3:
        raise ConfigError(f"token selection needs a [batch, pos, d] activation, got shape {tuple(activations.shape)}; "
                          "harvest a residual-stream style hook")
    if tokens == "cls":
        if n_prefix == 0:
            raise ConfigError("tokens='cls' but the model has no class token; use tokens='patches' or 'all'")
        return activations[:, 0]
    chosen = activations[:, n_prefix:] if tokens == "patches" else activations
    return rearrange(chosen, "b p d -> (b p) d")


@torch.no_grad()
def iter_activations(
    model: HookedViT,
    hook_name: str,
    images: Float[Tensor, "n channels height width"],
    tokens: str = "cls",
    batch_size: int = 256,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
) -> Iterator[Float[Tensor, "rows d"]]:
    """Yield, in dataset order, the selected rows of ``hook_name`` for each batch of dataset images in [0, 1].

    Rows are on ``device`` (default: the model's). Hooks already on the model (a gate, an SAE) stay
    active, so what is harvested is what the hook sees in use.
    """
    check_tokens(tokens)
    model.check_hook_name(hook_name)
    stop = stop_layer(model, hook_name)
    n_prefix = n_prefix_tokens(model)
    model_device = model.embed.W_E.device
    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> None:
        captured.append(activation)

    for batch in model_batches(images, model.cfg, model_device, batch_size, f"harvest {hook_name}", progress):
        model.run_with_hooks(batch, fwd_hooks=[(hook_name, grab)], stop_at_layer=stop)
        rows = select_tokens(captured.pop(), tokens, n_prefix)
        yield rows.to(device) if device is not None else rows
