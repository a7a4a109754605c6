"""Confidence intervals by bootstrap resampling (percentile method)."""

from __future__ import annotations

import torch
from torch import Tensor


def bootstrap_mean_ci(values: Tensor, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (e.g. 0/1 correctness for an accuracy).

    Returns ``(nan, nan)`` for an empty tensor. Seeded: the same inputs give the same interval.
    """
    values = values.detach().flatten().double().cpu()
    if values.numel() == 0:
        return (float("nan"), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, values.numel(), (n_resamples, values.numel()), generator=generator)
    means = values[index].mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return (low, high)


def mean_with_ci(values: Tensor, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` of ``values``; all NaN for an empty tensor (e.g. a class with no images)."""
    mean = float(values.double().mean()) if values.numel() else float("nan")
    return (mean, *bootstrap_mean_ci(values, n_resamples, confidence, seed))
