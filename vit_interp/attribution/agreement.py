"""Agreement between latent → head attribution methods: rank correlation and top-latent overlap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vit_interp.attribution.latent_head import LatentHeadAttribution
from vit_interp.errors import ConfigError


@dataclass
class MethodAgreement:
    """How well attribution methods agree, over the (latent, head) pairs where every method is finite.

    ``spearman[(a, b)]`` is the rank correlation of methods ``a`` and ``b`` over all those pairs of
    latents that fired; ``per_head[(a, b)][h]`` the same within head ``h``; ``top_overlap[(a, b)][h]``
    the fraction of head ``h``'s ``top`` latents (by ``|value|``) the two methods share.
    """

    methods: list[str]
    head_labels: list[str]
    top: int
    n_pairs: int
    spearman: dict[tuple[str, str], float]
    per_head: dict[tuple[str, str], list[float]]
    top_overlap: dict[tuple[str, str], list[float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (pairs keyed ``"a vs b"``)."""
        return {"methods": self.methods, "top": self.top, "n_pairs": self.n_pairs,
                "pairs": {f"{a} vs {b}": {"spearman": self.spearman[(a, b)],
                                          "spearman_per_head": dict(zip(self.head_labels, self.per_head[(a, b)])),
                                          f"top{self.top}_overlap_per_head": dict(zip(self.head_labels, self.top_overlap[(a, b)]))}
                          for a, b in self.spearman}}

    def to_markdown(self) -> str:
        """One row per pair of methods: overall and per-head Spearman ρ, mean top-``top`` overlap."""
        lines = ["| methods | Spearman ρ (all pairs) | " + " | ".join(f"ρ {h}" for h in self.head_labels)
                 + f" | top-{self.top} overlap (mean over heads) |",
                 "|---|---:|" + "---:|" * len(self.head_labels) + "---:|"]
        for (a, b), rho in self.spearman.items():
            per = " | ".join(f"{v:.2f}" for v in self.per_head[(a, b)])
            lines.append(f"| {a} vs {b} | {rho:.3f} | {per} | {float(np.nanmean(self.top_overlap[(a, b)])):.2f} |")
        return "\n".join(lines)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e - 1) / 2
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation of two equal-length 1-D arrays (NaN if either is constant or too short)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def method_agreement(results: Mapping[str, LatentHeadAttribution], top: int = 10) -> MethodAgreement:
    """Rank agreement between attribution methods computed on the same SAE, gate and images."""
    names = list(results)
    if len(names) < 2:
        raise ConfigError(f"method agreement needs at least two results, got {names}")
    first = results[names[0]]
    for name in names[1:]:
        other = results[name]
        if (other.matrix.shape, other.layer, other.n_images) != (first.matrix.shape, first.layer, first.n_images):
            raise ConfigError(f"results {names[0]!r} and {name!r} are not on the same SAE, layer and images")
    stack = torch.stack([results[n].matrix for n in names]).double()  # [methods, d_sae, H]
    usable = torch.isfinite(stack).all(0) & (first.fire_counts > 0)[:, None]
    rho, per_head, overlap = {}, {}, {}
    for i, j in combinations(range(len(names)), 2):
        a, b = stack[i], stack[j]
        pair = (names[i], names[j])
        rho[pair] = spearman(a[usable].numpy(), b[usable].numpy())
        per_head[pair] = [spearman(a[usable[:, h], h].numpy(), b[usable[:, h], h].numpy()) for h in range(first.n_heads)]
        overlap[pair] = [_top_overlap(a[:, h], b[:, h], usable[:, h], top) for h in range(first.n_heads)]
    return MethodAgreement(names, first.head_labels, top, int(usable.sum()), rho, per_head, overlap)


def _top_overlap(a: Tensor, b: Tensor, usable: Tensor, top: int) -> float:
    index = torch.nonzero(usable).flatten()
    if len(index) == 0:
        return float("nan")
    k = min(top, len(index))
    top_a = set(index[torch.argsort(a[index].abs(), descending=True, stable=True)[:k]].tolist())
    top_b = set(index[torch.argsort(b[index].abs(), descending=True, stable=True)[:k]].tolist())
    return len(top_a & top_b) / k
