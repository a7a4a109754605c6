"""``x @ W + b`` as one BLAS call (``addmm``) on any leading dimensions."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def affine(x: Float[Tensor, "*lead d_in"], weight: Float[Tensor, "d_in d_out"], bias: Float[Tensor, " d_out"]) -> Float[Tensor, "*lead d_out"]:
    """``x @ weight + bias``; one fused multiply-add instead of a matmul then a separate (large) add."""
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], weight.shape[-1])
