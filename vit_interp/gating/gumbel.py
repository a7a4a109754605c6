"""Binary keep/drop decisions from logits: Gumbel-sigmoid in training, a hard threshold at inference."""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor


def gumbel_sigmoid(
    logits: Float[Tensor, "*shape"], tau: float = 5.0, hard: bool = True, generator: Optional[torch.Generator] = None
) -> Float[Tensor, "*shape"]:
    """AdaViT's relaxed Bernoulli: ``sigmoid((logits + logistic noise) / tau)``.

    The difference of two Gumbel(0, 1) samples is logistic noise, which is what is drawn here. With
    ``hard=True`` the forward value is the 0/1 decision ``y_soft > 0.5`` and the gradient is that of
    ``y_soft`` (straight-through estimator).
    """
    uniform = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    uniform = uniform.clamp(torch.finfo(logits.dtype).tiny, 1 - torch.finfo(logits.dtype).eps)
    noise = torch.log(uniform) - torch.log1p(-uniform)
    soft = torch.sigmoid((logits + noise) / tau)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def keep_decisions(logits: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
    """Inference: keep iff ``sigmoid(logit) > 0.5`` (i.e. ``logit > 0``), as 0/1 floats."""
    return (logits > 0).to(logits.dtype)
