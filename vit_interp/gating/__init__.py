"""Dynamic head pruning: AdaViT-style decision networks that drive ``blocks.{l}.attn.hook_head_mask``."""

from vit_interp.gating.gumbel import gumbel_sigmoid, keep_decisions
from vit_interp.gating.head_gate import PRESETS, HeadGate, available_gates, mask_hook_name

__all__ = ["PRESETS", "HeadGate", "available_gates", "gumbel_sigmoid", "keep_decisions", "mask_hook_name"]
