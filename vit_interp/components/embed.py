"""Patch embedding with the extra (class, distillation, register) tokens, and position embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from jaxtyping import Float
from torch import Tensor, nn

from vit_interp.config import ViTConfig


class Embed(nn.Module):
    """Image → token embeddings ``[batch, pos, d_model]``: extra tokens, then one token per patch.

    The patch projection is a strided convolution (``W_E [d_model, in_channels, ph, pw]``, ``b_E``);
    the class, distillation and register tokens are learned vectors prepended in that order (timm's
    order). Position embeddings are added separately by `PosEmbed`, so ``hook_embed`` and
    ``hook_pos_embed`` decompose the first residual stream like TransformerLens' token and position
    embeddings.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        factory = {"dtype": cfg.dtype, "device": cfg.device}
        self.W_E = nn.Parameter(torch.empty(cfg.d_model, cfg.in_channels, *cfg.patch_size, **factory))
        self.b_E = nn.Parameter(torch.zeros(cfg.d_model, **factory))
        self.cls_token = nn.Parameter(torch.zeros(cfg.d_model, **factory)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(cfg.d_model, **factory)) if cfg.distill_token else None
        self.register_tokens = (
            nn.Parameter(torch.zeros(cfg.n_register_tokens, cfg.d_model, **factory))
            if cfg.n_register_tokens
            else None
        )

    def prefix_tokens(self) -> Float[Tensor, "n_prefix d_model"]:
        """The extra tokens, stacked in sequence order."""
        parts = [t[None] for t in (self.cls_token, self.dist_token) if t is not None]
        if self.register_tokens is not None:
            parts.append(self.register_tokens)
        if not parts:
            return self.b_E.new_zeros(0, self.cfg.d_model)
        return torch.cat(parts)

    def forward(self, images: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch pos d_model"]:
        patches = F.conv2d(images, self.W_E, self.b_E, stride=self.cfg.patch_size)
        patches = rearrange(patches, "b d gh gw -> b (gh gw) d")
        prefix = repeat(self.prefix_tokens(), "n d -> b n d", b=images.shape[0])
        return torch.cat([prefix, patches], dim=1)


class PosEmbed(nn.Module):
    """Learned absolute position embedding, returned expanded to ``[batch, pos, d_model]``.

    ``W_pos`` has a row per patch, plus a row per extra token when ``cfg.pos_embed_prefix`` (timm's
    ``no_embed_class=False``); otherwise the extra tokens' rows of the output are zero.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        n_rows = cfg.n_patches + (cfg.n_prefix_tokens if cfg.pos_embed_prefix else 0)
        self.W_pos = nn.Parameter(torch.empty(n_rows, cfg.d_model, dtype=cfg.dtype, device=cfg.device))

    def forward(self, batch_size: int) -> Float[Tensor, "batch pos d_model"]:
        rows = self.W_pos
        if not self.cfg.pos_embed_prefix:
            rows = torch.cat([rows.new_zeros(self.cfg.n_prefix_tokens, self.cfg.d_model), rows])
        return repeat(rows, "p d -> b p d", b=batch_size)
