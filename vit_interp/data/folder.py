"""An image folder with one sub-folder per class (PNG/JPEG)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vit_interp.data.dataset import ImageDataset
from vit_interp.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_image_folder(path: str | Path, image_size: Optional[int | tuple[int, int]] = None, name: str = "") -> ImageDataset:
    """Images under ``path/<class>/``; classes sorted by folder name.

    All images must share one size unless ``image_size`` is given (they are then resized). Greyscale
    folders give one channel; any colour image makes the dataset RGB.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders; put each class's images in {root}/<class name>/")
    files: list[tuple[Path, int]] = []
    for label, class_name in enumerate(classes):
        found = sorted(f for f in (root / class_name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"class folder {root / class_name} holds no PNG/JPEG images; add images or remove the folder")
        files += [(f, label) for f in found]
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    pictures = []
    for file, _ in files:
        try:
            with Image.open(file) as picture:
                picture.load()
                pictures.append(picture.copy())
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"cannot read image {file} ({type(error).__name__}); the file is corrupt, remove or replace it") from error
    mode = "L" if all(p.mode in ("L", "1", "I;16") for p in pictures) else "RGB"
    arrays = []
    for (file, _), picture in zip(files, pictures):
        picture = picture.convert(mode)
        if size is not None:
            picture = picture.resize((size[1], size[0]), Image.BILINEAR)
        elif picture.size != pictures[0].size:
            raise DataError(
                f"{file} is {picture.size[0]}x{picture.size[1]} but {files[0][0]} is "
                f"{pictures[0].size[0]}x{pictures[0].size[1]}; pass image_size= to resize them to one size"
            )
        array = np.asarray(picture, dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays)).float() / 255.0
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return ImageDataset(images, labels, classes, name or root.name, root.name)
