"""Atomic file writes: a crash mid-write never leaves a half-written checkpoint or card."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from safetensors.torch import save_file
from torch import Tensor


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_tensors_atomic(tensors: dict[str, Tensor], path: str | Path, metadata: Optional[dict[str, str]] = None) -> None:
    """Write a safetensors file via a temporary file and an atomic rename."""
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def save_json_atomic(data: Any, path: str | Path) -> None:
    """Write JSON (indented, UTF-8) via a temporary file and an atomic rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")

    _atomic(Path(path), write)


def save_text_atomic(text: str, path: str | Path) -> None:
    """Write UTF-8 text via a temporary file and an atomic rename."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    _atomic(Path(path), write)


def save_figure_atomic(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib ``Figure`` as PNG via a temporary file and an atomic rename."""
    path = Path(path)
    _atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))
    return path
