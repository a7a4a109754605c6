"""Bidirectional multi-head self-attention with a hook on every intermediate and a per-head mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.components.affine import affine
from vit_interp.components.fast_path import has_hooks, run_hook
from vit_interp.config import ViTConfig


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no causal mask).

    Parameters use TransformerLens layout: ``W_Q, W_K, W_V [n_heads, d_model, d_head]``,
    ``b_Q, b_K, b_V [n_heads, d_head]``, ``W_O [n_heads, d_head, d_model]``, ``b_O [d_model]``.

    The head mask (``hook_head_mask``, ones unless a hook or a gate changes it) multiplies each
    head's ``z`` *before* ``hook_z``, so the cached ``z`` is exactly what reaches ``W_O`` and
    TransformerLens' per-head decompositions stay correct for gated models. Kept heads are not
    rescaled. ``z`` comes from PyTorch's fused ``scaled_dot_product_attention`` unless a hook edits
    the scores or the pattern (see `vit_interp.components.fast_path`).

    The mask is decided before any head runs (``hook_head_mask`` fires first), so pruned heads can
    be skipped rather than zeroed: with ``skip_pruned_heads`` set, a 0/1 mask, no hook on the
    per-head activations and no gradient wanted through the mask, images are grouped by mask and
    only their kept heads' q/k/v, attention and output projection are computed (equal to the masked
    dense path up to float rounding). Otherwise the dense path runs and nothing is lost.

    Hooks:
        hook_q, hook_k, hook_v, hook_z: ``[batch, pos, n_heads, d_head]``.
        hook_attn_scores, hook_pattern: ``[batch, n_heads, q_pos, k_pos]`` (scores are pre-softmax,
            scaled by ``1/sqrt(d_head)``).
        hook_head_mask: ``[batch, n_heads]``.
        hook_result: ``[batch, pos, n_heads, d_model]``, only when ``cfg.use_attn_result``.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        factory = {"dtype": cfg.dtype, "device": cfg.device}
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e, **factory))
        self.W_K = nn.Parameter(torch.empty(h, d, e, **factory))
        self.W_V = nn.Parameter(torch.empty(h, d, e, **factory))
        self.W_O = nn.Parameter(torch.empty(h, e, d, **factory))
        self.b_Q = nn.Parameter(torch.zeros(h, e, **factory))
        self.b_K = nn.Parameter(torch.zeros(h, e, **factory))
        self.b_V = nn.Parameter(torch.zeros(h, e, **factory))
        self.b_O = nn.Parameter(torch.zeros(d, **factory))
        self.attn_scale = e**0.5

        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_head_mask = HookPoint()
        self.hook_z = HookPoint()
        self.set_use_attn_result(cfg.use_attn_result)
        self.skip_pruned_heads = False

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Add or remove ``hook_result``; a hook point exists only when it fires."""
        self.hook_result = HookPoint() if use_attn_result else None

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        n_heads = self.cfg.n_heads
        mask = self.hook_head_mask(torch.ones(x.shape[0], n_heads, dtype=x.dtype, device=x.device))
        if self.skip_pruned_heads and self._can_skip(mask):
            return self._kept_heads_only(x, mask)
        qkv = self._qkv(x, slice(None))
        q = self.hook_q(qkv[0])
        k = self.hook_k(qkv[1])
        v = self.hook_v(qkv[2])

        z = None
        if has_hooks(self.hook_attn_scores) or has_hooks(self.hook_pattern):
            scores, scores_edited = run_hook(self.hook_attn_scores, torch.einsum("bqhe,bkhe->bhqk", q, k) / self.attn_scale)
            pattern, pattern_edited = run_hook(self.hook_pattern, scores.softmax(dim=-1))
            if scores_edited or pattern_edited:
                z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        if z is None:  # nobody edits scores or pattern: the fused kernel gives the same z, faster
            heads_first = [rearrange(t, "b p h e -> b h p e") for t in (q, k, v)]
            z = rearrange(F.scaled_dot_product_attention(*heads_first), "b h p e -> b p h e")

        z = self.hook_z(z * mask[:, None, :, None])

        if self.hook_result is not None:
            result = self.hook_result(torch.einsum("bphe,hed->bphd", z, self.W_O))
            return result.sum(dim=-2) + self.b_O
        return affine(rearrange(z, "b p h e -> b p (h e)"), rearrange(self.W_O, "h e d -> (h e) d"), self.b_O)

    def _qkv(self, x: Float[Tensor, "batch pos d_model"], heads: slice | Tensor) -> Float[Tensor, "three batch pos h d_head"]:
        """q, k, v of the chosen heads from one fused projection (faster than three einsums, as in timm)."""
        weights = torch.stack([self.W_Q[heads], self.W_K[heads], self.W_V[heads]])
        biases = torch.stack([self.b_Q[heads], self.b_K[heads], self.b_V[heads]])
        w_qkv = rearrange(weights, "three h d e -> d (three h e)")
        b_qkv = rearrange(biases, "three h e -> (three h e)")
        return rearrange(affine(x, w_qkv, b_qkv), "b p (three h e) -> three b p h e", three=3, h=weights.shape[1])

    def _can_skip(self, mask: Tensor) -> bool:
        """Skipping is exact only for a 0/1 mask that prunes something, nobody watching the heads and
        no gradient wanted through the mask (a gate in training needs the dense product)."""
        watched = [self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern, self.hook_z]
        if self.hook_result is not None:
            watched.append(self.hook_result)
        if any(has_hooks(hook) for hook in watched) or (mask.requires_grad and torch.is_grad_enabled()):
            return False
        binary = bool(((mask == 0) | (mask == 1)).all())
        return binary and not bool(mask.all())

    def _kept_heads_only(self, x: Float[Tensor, "batch pos d_model"], mask: Float[Tensor, "batch n_heads"]) -> Float[Tensor, "batch pos d_model"]:
        """The attention output computing only kept heads.

        Few distinct masks (a shared mask, a gate that settles on a few subsets): one group of images
        per mask, with wide fused projections. Many: one group per head, so the number of kernel
        launches stays at ``n_heads`` however the masks mix.
        """
        patterns, group = torch.unique(mask.bool(), dim=0, return_inverse=True)
        if len(patterns) > max(2, self.cfg.n_heads // 2):
            return self._per_head(x, mask.bool())
        out = self.b_O.expand(x.shape[0], x.shape[1], -1).clone()  # images with every head pruned get b_O
        for index, pattern in enumerate(patterns):
            kept = pattern.nonzero().squeeze(1)
            if kept.numel() == 0:
                continue
            rows = (group == index).nonzero().squeeze(1)
            x_group = x if rows.numel() == x.shape[0] else x[rows]
            q, k, v = (rearrange(t, "b p h e -> b h p e") for t in self._qkv(x_group, kept))
            z = rearrange(F.scaled_dot_product_attention(q, k, v), "b h p e -> b p (h e)")
            out[rows] = affine(z, rearrange(self.W_O[kept], "h e d -> (h e) d"), self.b_O)
        return out

    def _per_head(self, x: Float[Tensor, "batch pos d_model"], keep: Tensor) -> Float[Tensor, "batch pos d_model"]:
        """Each head runs on the images that keep it; pruned heads' z stay zero for the output projection."""
        z = x.new_zeros(x.shape[0], x.shape[1], self.cfg.n_heads, self.cfg.d_head)
        for head in range(self.cfg.n_heads):
            rows = keep[:, head].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            q, k, v = (rearrange(t, "b p h e -> b h p e") for t in self._qkv(x[rows], slice(head, head + 1)))
            z[rows, :, head] = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return affine(rearrange(z, "b p h e -> b p (h e)"), rearrange(self.W_O, "h e d -> (h e) d"), self.b_O)
