"""A pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.components.attention import Attention
from vit_interp.components.layer_norm import LayerNorm
from vit_interp.components.mlp import MLP
from vit_interp.config import ViTConfig


class TransformerBlock(nn.Module):
    """One block. Layer scale (DeiT-III, DINOv2) is folded into ``W_O``/``b_O`` and ``W_out``/``b_out``
    when weights are converted, so ``hook_attn_out`` and ``hook_mlp_out`` are exactly what is added to
    the residual stream.

    Hooks: ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``,
    ``hook_resid_post``, all ``[batch, pos, d_model]``; plus those of ``ln1``, ``attn``, ``ln2``, ``mlp``.
    """

    def __init__(self, cfg: ViTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps, cfg.normalization_type, cfg.dtype, cfg.device)
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps, cfg.normalization_type, cfg.dtype, cfg.device)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)
