"""Building blocks of `HookedViT`; each owns the hook points of the computation it performs."""

from vit_interp.components.attention import Attention
from vit_interp.components.block import TransformerBlock
from vit_interp.components.classifier import Classifier
from vit_interp.components.embed import Embed, PosEmbed
from vit_interp.components.layer_norm import LayerNorm
from vit_interp.components.mlp import MLP

__all__ = ["Attention", "TransformerBlock", "Classifier", "Embed", "PosEmbed", "LayerNorm", "MLP"]
