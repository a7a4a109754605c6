"""LayerNorm that exposes its scale and its output (TransformerLens `LayerNorm` / `LayerNormPre`)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.config import NormalizationType


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension.

    ``LN`` centres, divides by the RMS of the centred vector (``hook_scale``) and applies a weight
    ``w`` and bias ``b``. ``LNPre`` only centres and scales: its weight and bias have been folded into
    the next layer (see `vit_interp.weight_processing.fold_layer_norm`).

    Hooks:
        hook_scale: ``[..., 1]``, the divisor.
        hook_normalized: ``[..., length]``, the output.
    """

    def __init__(self, length: int, eps: float, mode: NormalizationType = "LN", dtype=None, device=None):
        super().__init__()
        self.length = length
        self.eps = eps
        self.mode = mode
        if mode == "LN":
            self.w = nn.Parameter(torch.ones(length, dtype=dtype, device=device))
            self.b = nn.Parameter(torch.zeros(length, dtype=dtype, device=device))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "*batch length"]) -> Float[Tensor, "*batch length"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = x / scale
        if self.mode == "LN":
            x = x * self.w + self.b
        return self.hook_normalized(x)
