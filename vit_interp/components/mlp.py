"""The MLP sub-layer of a transformer block."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.components.affine import affine
from vit_interp.config import ViTConfig


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """``W_out · act(W_in · x + b_in) + b_out``.

    Parameters use TransformerLens layout: ``W_in [d_model, d_mlp]``, ``W_out [d_mlp, d_model]``.

    Hooks:
        hook_pre: ``[batch, pos, d_mlp]``, pre-activation.
        hook_post: ``[batch, pos, d_mlp]``, post-activation.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        factory = {"dtype": cfg.dtype, "device": cfg.device}
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, **factory))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, **factory))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, **factory))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, **factory))
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(affine(x, self.W_in, self.b_in))
        post = self.hook_post(self.act(pre))
        return affine(post, self.W_out, self.b_out)
