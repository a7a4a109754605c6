"""LayerNorm that exposes its scale and its output (TransformerLens `LayerNorm` / `LayerNormPre`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.components.fast_path import has_hooks, run_hook
from vit_interp.config import NormalizationType


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension.

    ``LN`` centres, divides by the RMS of the centred vector (``hook_scale``) and applies a weight
    ``w`` and bias ``b``. ``LNPre`` only centres and scales: its weight and bias have been folded into
    the next layer (see `vit_interp.weight_processing.fold_layer_norm`). The fused ``F.layer_norm``
    computes the output unless a hook edits the scale (see `vit_interp.components.fast_path`).

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
        if has_hooks(self.hook_scale):
            var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
            scale, edited = run_hook(self.hook_scale, (var + self.eps).sqrt())
            if edited:  # the edited scale must reach the output: compute it explicitly
                x = (x - mean) / scale
                return self.hook_normalized(torch.addcmul(self.b, x, self.w) if self.mode == "LN" else x)
        weight, bias = (self.w, self.b) if self.mode == "LN" else (None, None)
        return self.hook_normalized(F.layer_norm(x, (self.length,), weight, bias, self.eps))
