"""vit-interp: TransformerLens-style mechanistic interpretability for Vision Transformers."""

from vit_interp.config import ViTConfig
from vit_interp.hooked_vit import HookedViT

__all__ = ["HookedViT", "ViTConfig"]
__version__ = "0.1.0"
