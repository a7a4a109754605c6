"""The linear classifier on the pooled representation (never called "head": heads attend)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vit_interp.config import ViTConfig


class Classifier(nn.Module):
    """``pooled @ W_U + b_U``.

    For a distilled DeiT (``pool='cls_dist'``) the pooled input is ``[batch, 2, d_model]`` (class and
    distillation tokens) and a second classifier ``W_U_dist``/``b_U_dist`` reads the distillation token;
    the logits are the mean of both, as in timm at inference.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        factory = {"dtype": cfg.dtype, "device": cfg.device}
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.n_classes, **factory))
        self.b_U = nn.Parameter(torch.zeros(cfg.n_classes, **factory))
        self.distilled = cfg.pool == "cls_dist"
        if self.distilled:
            self.W_U_dist = nn.Parameter(torch.empty(cfg.d_model, cfg.n_classes, **factory))
            self.b_U_dist = nn.Parameter(torch.zeros(cfg.n_classes, **factory))

    def forward(self, pooled: Float[Tensor, "batch *n_pooled d_model"]) -> Float[Tensor, "batch n_classes"]:
        if self.distilled:
            cls_logits = pooled[:, 0] @ self.W_U + self.b_U
            dist_logits = pooled[:, 1] @ self.W_U_dist + self.b_U_dist
            return (cls_logits + dist_logits) / 2
        return pooled @ self.W_U + self.b_U
