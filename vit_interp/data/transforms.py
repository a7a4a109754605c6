"""Batched image transforms on tensors: fit images to a model, normalise, augment."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.config import ViTConfig
from vit_interp.errors import ImageInputError


def normalize(
    images: Float[Tensor, "batch channels height width"], mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
) -> Float[Tensor, "batch channels height width"]:
    """``(images - mean) / std`` per channel; identity when ``mean``/``std`` are None."""
    if mean is None or std is None:
        return images
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[None, :, None, None]
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)[None, :, None, None]
    return (images - mean_t) / std_t


def fit_to_model(images: Float[Tensor, "batch channels height width"], cfg: ViTConfig) -> Float[Tensor, "batch in_channels out_height out_width"]:
    """Resize to ``cfg.image_size`` (bilinear) and repeat grey images to ``cfg.in_channels`` channels."""
    channels = images.shape[1]
    if channels != cfg.in_channels:
        if channels != 1:
            raise ImageInputError(
                f"images have {channels} channels and the model {cfg.in_channels}; only greyscale images "
                "are converted automatically, convert the others yourself"
            )
        images = images.expand(-1, cfg.in_channels, -1, -1)
    if tuple(images.shape[-2:]) != tuple(cfg.image_size):  # type: ignore[arg-type]
        images = F.interpolate(images, size=tuple(cfg.image_size), mode="bilinear", align_corners=False, antialias=True)  # type: ignore[arg-type]
    return images


def prepare(images: Float[Tensor, "batch channels height width"], cfg: ViTConfig) -> Float[Tensor, "batch in_channels out_height out_width"]:
    """Dataset images in [0, 1] → model input: `fit_to_model`, then `normalize` with the model's statistics."""
    return normalize(fit_to_model(images, cfg).to(cfg.dtype), cfg.image_mean, cfg.image_std)


def model_batches(
    images: Float[Tensor, "n channels height width"],
    cfg: ViTConfig,
    device: Union[str, torch.device],
    batch_size: int = 512,
    desc: str = "batches",
    progress: bool = True,
) -> Iterator[Float[Tensor, "batch in_channels out_height out_width"]]:
    """Dataset images in [0, 1], in order, as `prepare`d model inputs on ``device``, with a progress bar."""
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        yield prepare(images[start: start + batch_size].to(device), cfg)


def augment(
    images: Float[Tensor, "batch channels height width"], generator: torch.Generator, max_shift: int = 2, flip: bool = True
) -> Float[Tensor, "batch channels height width"]:
    """Random translation by up to ``max_shift`` pixels (zero fill) and random horizontal flips.

    All randomness comes from ``generator``, so a seeded generator gives the same batch every time.
    """
    batch, _, height, width = images.shape
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4)
        dy = torch.randint(0, 2 * max_shift + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * max_shift + 1, (batch,), generator=generator)
        rows = (dy[:, None] + torch.arange(height)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width)[None])[:, None, None, :]
        index = torch.arange(batch)[:, None, None, None]
        images = padded[index, torch.arange(images.shape[1])[None, :, None, None], rows, cols]
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
        images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    return images
