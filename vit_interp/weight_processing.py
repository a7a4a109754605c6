"""Weight processing on `HookedViT` state dicts (TransformerLens' ``fold_ln``, for ViTs).

Functions here take and return ``(state_dict, cfg)`` pairs so that a processed model is built
fresh from its config, never patched in place behind its hooks' back.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import Tensor

from vit_interp.config import ViTConfig


def _fold_into_heads(state: dict[str, Tensor], ln: str, attn: str) -> None:
    w, b = state.pop(f"{ln}.w"), state.pop(f"{ln}.b")
    for name in ("Q", "K", "V"):
        weight = state[f"{attn}.W_{name}"]  # [n_heads, d_model, d_head]
        state[f"{attn}.b_{name}"] = state[f"{attn}.b_{name}"] + einsum(b, weight, "d, h d e -> h e")
        weight = w[None, :, None] * weight
        # LNPre outputs centred vectors, so centring the weights along d_model changes nothing but
        # makes them comparable across models (TransformerLens does the same).
        state[f"{attn}.W_{name}"] = weight - weight.mean(dim=1, keepdim=True)


def _fold_into_linear(state: dict[str, Tensor], ln: str, weights: list[tuple[str, str]]) -> None:
    w, b = state.pop(f"{ln}.w"), state.pop(f"{ln}.b")
    for weight_name, bias_name in weights:
        weight = state[weight_name]  # [d_model, d_out]
        state[bias_name] = state[bias_name] + b @ weight
        weight = w[:, None] * weight
        state[weight_name] = weight - weight.mean(dim=0, keepdim=True)


@torch.no_grad()
def fold_layer_norm(state_dict: dict[str, Tensor], cfg: ViTConfig) -> tuple[dict[str, Tensor], ViTConfig]:
    """Fold every LayerNorm's weight and bias into the layer that reads it.

    ``ln1`` goes into ``W_Q/W_K/W_V`` (and their biases), ``ln2`` into ``W_in``/``b_in``, ``ln_final``
    into the classifier. The LayerNorms become ``LNPre`` (centre and scale only) and the model's
    outputs are unchanged up to float rounding. ``ln_pre`` (CLIP-style pre-norm) is kept: its output
    is the residual stream itself, there is nothing to fold it into.

    Returns:
        The new state dict and a config with ``normalization_type='LNPre'``.
    """
    if cfg.normalization_type == "LNPre":
        return dict(state_dict), cfg
    state = {name: tensor.clone() for name, tensor in state_dict.items()}
    for layer in range(cfg.n_layers):
        _fold_into_heads(state, f"blocks.{layer}.ln1", f"blocks.{layer}.attn")
        _fold_into_linear(state, f"blocks.{layer}.ln2", [(f"blocks.{layer}.mlp.W_in", f"blocks.{layer}.mlp.b_in")])
    classifier = [("classifier.W_U", "classifier.b_U")]
    if cfg.pool == "cls_dist":
        classifier.append(("classifier.W_U_dist", "classifier.b_U_dist"))
    _fold_into_linear(state, "ln_final", classifier)
    return state, cfg.replace(normalization_type="LNPre")
