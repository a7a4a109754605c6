"""What to steer: which SAE latents, how (scale, add, clamp), and what the steered vector feeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vit_interp.errors import ConfigError, LatentIndexError

MODES = ("scale", "add", "clamp")
TARGETS = ("gate", "gate+stream")


@dataclass(frozen=True)
class SteeringSpec:
    """Rescale, shift or clamp some SAE latents.

    Args:
        latents: Latent ids of the SAE (``0 .. d_sae-1``).
        mode: ``scale`` (a ← α·a), ``add`` (a ← a + c) or ``clamp`` (a ← c).
        value: α for ``scale`` (must be > 0; 1 changes nothing), c for ``add``/``clamp``.
        target: ``gate``: the steered reconstruction plus the error term feeds only the head gate
            (the paper's control surface; the residual stream is untouched); ``gate+stream``: it also
            replaces the residual stream at the SAE's hook.
    """

    latents: tuple[int, ...]
    mode: str = "scale"
    value: float = 1.0
    target: str = "gate"
    _index: Tensor = field(init=False, repr=False, compare=False)

    def __init__(self, latents: Any, mode: str = "scale", value: float = 1.0, target: str = "gate"):
        if isinstance(latents, int) or (isinstance(latents, Tensor) and latents.ndim == 0):
            latents = [int(latents)]
        ids = [int(j) for j in latents]
        if not ids:
            raise ConfigError("a steering spec needs at least one latent id")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"latent ids must be distinct, got {ids}")
        if mode not in MODES:
            raise ConfigError(f"unknown steering mode {mode!r}; choose one of {list(MODES)}")
        if target not in TARGETS:
            raise ConfigError(f"unknown steering target {target!r}; choose one of {list(TARGETS)}")
        if mode == "scale" and not value > 0:
            raise ConfigError(f"scale factor must be > 0, got {value}; use mode='clamp' with value=0 to switch latents off")
        object.__setattr__(self, "latents", tuple(ids))
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "value", float(value))
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "_index", torch.tensor(ids, dtype=torch.long))

    def check(self, d_sae: int) -> None:
        """Raise a one-line `LatentIndexError` if a latent id is not one of the SAE's ``d_sae`` latents."""
        bad = [j for j in self.latents if not 0 <= j < d_sae]
        if bad:
            raise LatentIndexError(f"latent ids {bad} are out of range for an SAE with {d_sae} latents (0..{d_sae - 1})")

    def apply(self, acts: Tensor, rows: Tensor | None = None) -> Tensor:
        """The steered latent activations (a new tensor); ``rows`` (bool over the first axis) limits
        steering to those inputs."""
        index = self._index.to(acts.device)
        chosen = acts[..., index]
        if self.mode == "scale":
            steered = chosen * self.value
        elif self.mode == "add":
            steered = chosen + self.value
        else:
            steered = torch.full_like(chosen, self.value)
        if rows is not None:
            keep = rows.to(acts.device).view(-1, *([1] * (acts.ndim - 1)))
            steered = torch.where(keep, steered, chosen)
        out = acts.clone()
        out[..., index] = steered
        return out

