"""IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vit_interp.errors import DataError

# Third byte of the magic number → element type (the IDX spec); Fashion-MNIST uses only uint8.
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> Tensor:
    """Read an IDX file (``.gz`` or raw) into a tensor of its declared shape.

    Raises:
        DataError: wrong magic number, unknown element type, or a file shorter/longer than its header says.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:  # gzip raises these on truncated or corrupt archives
        raise DataError(f"cannot read {path}: {error}; the file is corrupt or truncated, download it again") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()}); check the file name and format")
    n_dims = data[3]
    header = 4 + 4 * n_dims
    if len(data) < header:
        raise DataError(f"{path} is truncated inside its header; download it again")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} bytes of data but its header promises {expected} for shape "
            f"{list(shape)}; the file is truncated or corrupt, download it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))
