"""Loading `HookedViT` weights from other libraries."""

from vit_interp.loading.timm import config_from_timm, hooked_vit_from_timm, state_dict_from_timm

__all__ = ["config_from_timm", "hooked_vit_from_timm", "state_dict_from_timm"]
