"""`ImageDataset`: images, labels and class names held as tensors, with a deterministic split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int64
from torch import Tensor

from vit_interp.errors import DataError


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        images: ``[n, channels, height, width]`` float32 pixels in ``[0, 1]`` (not normalised: see
            `vit_interp.data.transforms.normalize`).
        labels: ``[n]`` int64 class indices.
        class_names: One name per class, indexed by label.
        name: Dataset name (e.g. ``fashion-mnist``).
        split: Which split this is (``train``, ``val``, ``test``, or a folder name).
    """

    images: Float[Tensor, "n_images channels height width"]
    labels: Int64[Tensor, " n_labels"]  # own dim name: a count mismatch gets our DataError
    class_names: list[str]
    name: str = ""
    split: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise DataError(
                f"{self.name or 'dataset'}: {len(self.images)} images but {len(self.labels)} labels; "
                "the image and label files do not belong together"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: Tensor, split: str | None = None) -> "ImageDataset":
        """The examples at ``index`` (a tensor of positions)."""
        return ImageDataset(self.images[index], self.labels[index], self.class_names, self.name, split or self.split)

    def head(self, n: int) -> "ImageDataset":
        """The first ``n`` examples (for quick runs and tests)."""
        return self.subset(torch.arange(min(n, len(self))))

    def class_counts(self) -> Tensor:
        """Examples per class, ``[n_classes]``."""
        return torch.bincount(self.labels, minlength=self.n_classes)


def split_train_val(dataset: ImageDataset, val_size: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Hold out ``val_size`` examples, stratified by class, chosen by ``seed`` (same seed, same split)."""
    if not 0 <= val_size < len(dataset):
        raise ValueError(f"val_size {val_size} must be in [0, {len(dataset)}); pick a smaller validation split")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)
    # Stratify: take each class's share of the validation set from its shuffled examples.
    counts = dataset.class_counts()
    share = torch.floor(counts.double() * val_size / len(dataset)).long()
    remainder = val_size - int(share.sum())
    share[torch.argsort(counts, descending=True, stable=True)[:remainder]] += 1
    shuffled_labels = dataset.labels[order]
    val_index = torch.cat([order[shuffled_labels == c][: int(share[c])] for c in range(dataset.n_classes)])
    is_val = torch.zeros(len(dataset), dtype=torch.bool)
    is_val[val_index] = True
    train_index = torch.nonzero(~is_val).flatten()
    val_index = torch.nonzero(is_val).flatten()  # sorted, so the split does not depend on class order
    return dataset.subset(train_index, "train"), dataset.subset(val_index, "val")
