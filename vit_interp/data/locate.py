"""Where dataset files are looked for, and torchvision's download as the last resort."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from vit_interp.errors import DataError

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "VIT_INTERP_DATA"


def default_download_root() -> Path:
    """``$VIT_INTERP_DATA`` if set, else ``~/.cache/vit-interp``."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "vit-interp"


def search_roots(root: Optional[str | Path], system_dirs: tuple[str, ...] = ()) -> list[Path]:
    """Directories to search, in order: ``root``, ``$VIT_INTERP_DATA``, system dirs, the download root."""
    if root is not None:
        return [Path(root)]
    roots = []
    if os.environ.get(DATA_ENV_VAR):
        roots.append(Path(os.environ[DATA_ENV_VAR]))
    roots += [Path(d) for d in system_dirs]
    roots.append(default_download_root())
    return roots


def find_or_download(
    what: str,
    roots: list[Path],
    find: Callable[[Path], Optional[Path]],
    download: Optional[Callable[[Path], None]],
    how_to_get: str,
) -> Path:
    """Return the first directory ``find`` accepts; otherwise download into the last root and retry.

    Raises:
        DataError: nothing found and the download failed or was disabled; the message says how to get the data.
    """
    for candidate in roots:
        found = find(candidate)
        if found is not None:
            return found
    searched = ", ".join(str(r) for r in roots)
    if download is None:
        raise DataError(f"{what} not found (searched {searched}); {how_to_get}")
    target = roots[-1]  # the explicit root, else the download root (never a system folder)
    logger.info("%s not found locally; downloading with torchvision into %s", what, target)
    try:
        download(target)
    except Exception as error:  # no network, blocked host, disk full: all end the same way
        raise DataError(
            f"{what} not found (searched {searched}) and the download failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no message'}); {how_to_get}"
        ) from error
    found = find(target)
    if found is None:
        raise DataError(f"{what}: the download into {target} did not produce the expected files; {how_to_get}")
    return found
