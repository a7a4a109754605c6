"""Sparse autoencoders (sae-lens) on HookedViT activations: harvesting, training, splicing, metrics."""

from vit_interp.sae.harvest import TOKEN_CHOICES, iter_activations, select_tokens

__all__ = ["TOKEN_CHOICES", "iter_activations", "select_tokens"]
