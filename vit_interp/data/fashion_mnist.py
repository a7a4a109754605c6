"""Fashion-MNIST (and MNIST) from IDX files: Debian's package, torchvision's layout, or a download."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from vit_interp.data.dataset import ImageDataset
from vit_interp.data.idx import read_idx
from vit_interp.data.locate import find_or_download, search_roots
from vit_interp.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = (
    "install Debian's package (sudo apt-get install dataset-fashion-mnist), or put the four IDX files "
    "in a folder and pass root= / set VIT_INTERP_DATA"
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _file(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_idx_dir(root: Path) -> Optional[Path]:
    """The folder under ``root`` holding all four files: ``root`` itself, ``root/fashion-mnist`` or
    torchvision's ``root/FashionMNIST/raw``."""
    for directory in (root, root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        if all(_file(directory, stem) for pair in _FILES.values() for stem in pair):
            return directory
    return None


def _torchvision_download(target: Path) -> None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(target), train=True, download=True)
    FashionMNIST(str(target), train=False, download=True)


def fashion_mnist_files(root: Optional[str | Path] = None, download: bool = True) -> list[Path]:
    """The four IDX files that `load_fashion_mnist` reads (for hashing into model cards)."""
    directory = find_or_download(
        "Fashion-MNIST", search_roots(root, (DEBIAN_DIR,)), find_idx_dir,
        _torchvision_download if download else None, HOW_TO_GET,
    )
    return [_file(directory, stem) for pair in _FILES.values() for stem in pair]  # type: ignore[misc]


def load_fashion_mnist(split: str = "train", root: Optional[str | Path] = None, download: bool = True) -> ImageDataset:
    """The official ``train`` (60,000) or ``test`` (10,000) split as ``[n, 1, 28, 28]`` floats in [0, 1].

    Looks in ``root`` if given, else ``$VIT_INTERP_DATA``, ``/usr/share/datasets/fashion-mnist``
    (Debian package ``dataset-fashion-mnist``) and ``~/.cache/vit-interp``, accepting plain or
    torchvision (``FashionMNIST/raw``) layouts; downloads with torchvision if nothing is found.
    """
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST has splits {list(_FILES)}, not {split!r}")
    files = fashion_mnist_files(root, download)
    images, labels = (read_idx(files[i]) for i in ((0, 1) if split == "train" else (2, 3)))
    directory = files[0].parent
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(
            f"{directory}: expected images [n, 28, 28] and labels [n], got {list(images.shape)} and "
            f"{list(labels.shape)}; the image and label files are swapped or corrupt"
        )
    if int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{directory}: label {int(labels.max())} outside the 10 Fashion-MNIST classes; the labels file is corrupt")
    return ImageDataset(
        images=images[:, None].float() / 255.0,
        labels=labels.long(),
        class_names=list(FASHION_MNIST_CLASSES),
        name="fashion-mnist",
        split=split,
    )
