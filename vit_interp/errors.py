"""Typed errors raised by vit-interp.

Each error's message is one line that names what was wrong and what to do about it. The classes
subclass the built-in exception a Python user would try first (``ValueError``, ``TypeError``,
``KeyError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class VitInterpError(Exception):
    """Base class of every error vit-interp raises on purpose."""


class ConfigError(VitInterpError, ValueError):
    """A model configuration is inconsistent (e.g. image size not divisible by patch size)."""


class ImageInputError(VitInterpError, ValueError):
    """Images passed to a model have the wrong rank, size, channel count or non-finite values."""


class ImageDtypeError(VitInterpError, TypeError):
    """Images passed to a model are not a floating tensor of the model's dtype."""


class UnknownHookError(VitInterpError, KeyError):
    """A hook name does not exist on the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it a readable line
        return str(self.args[0]) if self.args else ""


class ClassIndexError(VitInterpError, IndexError):
    """A class index or class name is outside the model's classes."""


class UnsupportedModelError(VitInterpError, ValueError):
    """A model (e.g. a timm architecture) uses a feature HookedViT cannot represent exactly."""


class DataError(VitInterpError, ValueError):
    """A dataset file is missing, corrupt, truncated or inconsistent."""


class LatentIndexError(VitInterpError, IndexError):
    """An SAE latent id is outside ``0..d_sae-1``."""
