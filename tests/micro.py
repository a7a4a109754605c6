"""Micro models and inputs for tests: they run in milliseconds on a CPU."""

from __future__ import annotations

import torch

from vit_interp import HookedViT, ViTConfig


def micro_config(**overrides) -> ViTConfig:
    """A 2-layer ViT on 16x16 RGB images with patch 4 (16 patches + CLS)."""
    fields = dict(n_layers=2, d_model=32, n_heads=4, d_mlp=48, image_size=16, patch_size=4, n_classes=5, seed=0)
    fields.update(overrides)
    return ViTConfig(**fields)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter (LN weights away from 1, biases away from 0) so tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model


def micro_model(seed: int = 0, **overrides) -> HookedViT:
    """A randomised micro `HookedViT` in eval mode."""
    return randomize(HookedViT(micro_config(**overrides)), seed=seed).eval()


def images_for(model: HookedViT, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Random images of the model's size, channels and dtype."""
    cfg = model.cfg
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_channels, *cfg.image_size, generator=generator).to(cfg.dtype)
