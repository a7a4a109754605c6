"""Loading `HookedViT` weights: from timm, and saved or shipped models."""

from vit_interp.loading.pretrained import available_models, load_card, load_pretrained, save_pretrained
from vit_interp.loading.timm import config_from_timm, hooked_vit_from_timm, state_dict_from_timm

__all__ = [
    "available_models", "config_from_timm", "hooked_vit_from_timm", "load_card", "load_pretrained",
    "save_pretrained", "state_dict_from_timm",
]
