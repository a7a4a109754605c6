"""Datasets as in-memory tensors: Fashion-MNIST (the embedded default), CIFAR-10/100, image folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vit_interp.data.cifar import load_cifar
from vit_interp.data.dataset import ImageDataset, split_train_val
from vit_interp.data.fashion_mnist import load_fashion_mnist
from vit_interp.data.folder import load_image_folder
from vit_interp.data.transforms import augment, fit_to_model, model_batches, normalize, prepare
from vit_interp.errors import DataError

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "folder:PATH")
SPLITS = ("train", "val", "test", "train-full")
DEFAULT_VAL_SIZE = 5000


def default_val_size(name: str, n_train_full: int) -> int:
    """The validation hold-out size used when none is given: 5000, or 10% for image folders."""
    return DEFAULT_VAL_SIZE if not name.startswith("folder:") else max(1, n_train_full // 10)


def _official(name: str, split: str, root: Optional[str | Path], download: bool) -> ImageDataset:
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root=root, download=download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, root=root, download=download)
    if name.startswith("folder:"):
        path = Path(name.removeprefix("folder:"))
        if (path / "train").is_dir() and (path / "test").is_dir():
            return load_image_folder(path / split, name=name)
        if split == "test":
            raise DataError(f"{path} has no test/ sub-folder; lay it out as {path}/train/<class>/ and {path}/test/<class>/")
        return load_image_folder(path, name=name)
    raise DataError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")


def load_dataset(
    name: str,
    split: str = "train",
    root: Optional[str | Path] = None,
    val_size: Optional[int] = None,
    seed: int = 0,
    download: bool = True,
) -> ImageDataset:
    """Load a dataset split as an `ImageDataset` (float images in [0, 1], labels, class names).

    Args:
        name: ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``folder:PATH`` (``PATH/<class>/`` images,
            or ``PATH/train/<class>/`` and ``PATH/test/<class>/``).
        split: ``train`` (the official training split minus a held-out validation set), ``val`` (that
            held-out set), ``test``, or ``train-full`` (the whole official training split).
        root: Folder holding the files (default: search ``$VIT_INTERP_DATA``, Debian's
            ``/usr/share/datasets``, ``~/.cache/vit-interp``).
        val_size: Size of the validation hold-out (default 5000, or 10% for folders); stratified by
            class and fixed by ``seed``.
        seed: Seed of the train/validation split.
        download: Try torchvision's download when the files are not found.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if split == "test":
        return _official(name, "test", root, download)
    full = _official(name, "train", root, download)
    full.split = "train-full"
    if split == "train-full":
        return full
    train, val = split_train_val(full, default_val_size(name, len(full)) if val_size is None else val_size, seed)
    return train if split == "train" else val


__all__ = [
    "DATASETS", "SPLITS", "ImageDataset", "augment", "default_val_size", "fit_to_model", "load_cifar", "load_dataset",
    "load_fashion_mnist", "load_image_folder", "model_batches", "normalize", "prepare", "split_train_val",
]
