"""CIFAR-10 / CIFAR-100 in torchvision's on-disk format (``cifar-10-batches-py``, ``cifar-100-python``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vit_interp.data.dataset import ImageDataset
from vit_interp.data.locate import find_or_download, search_roots
from vit_interp.errors import DataError

_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", names="label_names", labels="labels", torchvision="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     meta="meta", names="fine_label_names", labels="fine_labels", torchvision="CIFAR100"),
}


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's files are pickles of dicts of numpy arrays and lists: refuse anything else, so a
    tampered file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise DataError(f"CIFAR file refers to {module}.{name}, which a CIFAR batch never contains; the file is not a CIFAR batch")
        return super().find_class(module, name)


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            data = _ArraysOnly(handle, encoding="latin1").load()
    except DataError:
        raise
    except Exception as error:  # truncated pickles raise EOFError / UnpicklingError / ValueError
        raise DataError(f"cannot read {path} ({type(error).__name__}); the file is corrupt or truncated, download it again") from error
    if not isinstance(data, dict):
        raise DataError(f"{path} does not hold a CIFAR batch dict; check the file")
    return data


def load_cifar(variant: str, split: str = "train", root: Optional[str | Path] = None, download: bool = True) -> ImageDataset:
    """CIFAR-10 or CIFAR-100 (fine labels) ``train``/``test`` split as ``[n, 3, 32, 32]`` floats in [0, 1]."""
    if variant not in _LAYOUT:
        raise DataError(f"unknown CIFAR variant {variant!r}; use 'cifar10' or 'cifar100'")
    if split not in ("train", "test"):
        raise DataError(f"{variant} has splits ['train', 'test'], not {split!r}")
    layout = _LAYOUT[variant]

    def find(root_dir: Path) -> Optional[Path]:
        folder = root_dir / layout["folder"]
        return folder if (folder / layout["meta"]).is_file() else None

    def torchvision_download(target: Path) -> None:
        import torchvision.datasets

        getattr(torchvision.datasets, layout["torchvision"])(str(target), train=True, download=True)

    how = f"download it with torchvision.datasets.{layout['torchvision']}(root, download=True) and pass root="
    folder = find_or_download(variant, search_roots(root), find, torchvision_download if download else None, how)
    names = [str(n) for n in _read(folder / layout["meta"])[layout["names"]]]
    images, labels = [], []
    for file in layout[split]:
        path = folder / file
        if not path.is_file():
            raise DataError(f"{path} is missing; the {variant} folder is incomplete, download it again")
        batch = _read(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        batch_labels = np.asarray(batch[layout["labels"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch_labels):
            raise DataError(
                f"{path}: {data.shape} pixels for {len(batch_labels)} labels; expected [n, 3072] with one label "
                "per image, the file is corrupt"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(batch_labels))
    label_tensor = torch.cat(labels)
    if len(label_tensor) and (int(label_tensor.min()) < 0 or int(label_tensor.max()) >= len(names)):
        raise DataError(f"{folder}: labels outside 0..{len(names) - 1}; the files are corrupt")
    return ImageDataset(torch.cat(images).float() / 255.0, label_tensor, names, variant, split)
