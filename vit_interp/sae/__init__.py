"""Sparse autoencoders (sae-lens) on HookedViT activations: harvesting, training, splicing, metrics."""

from vit_interp.sae.files import available_saes, check_sae_fits, load_sae, save_sae
from vit_interp.sae.harvest import (
    TOKEN_CHOICES,
    ActivationShards,
    activation_stream,
    harvest_to_disk,
    iter_activations,
    select_tokens,
)
from vit_interp.sae.dashboards import (
    latent_dashboard,
    save_dashboards,
    save_latent_dashboard,
    save_summary_figure,
    save_top_images_grid,
    summary_figure,
    top_images_grid,
)
from vit_interp.sae.latent_stats import LatentStatistics, SelectivityTable, latent_statistics
from vit_interp.sae.metrics import SAEEvaluation, evaluate_sae
from vit_interp.sae.training import ARCHITECTURES, SAETrainConfig, reconstruction_metrics, to_inference, train_sae

__all__ = [
    "ARCHITECTURES",
    "TOKEN_CHOICES",
    "ActivationShards",
    "LatentStatistics",
    "SAEEvaluation",
    "SAETrainConfig",
    "SelectivityTable",
    "activation_stream",
    "available_saes",
    "check_sae_fits",
    "evaluate_sae",
    "harvest_to_disk",
    "iter_activations",
    "latent_dashboard",
    "latent_statistics",
    "load_sae",
    "reconstruction_metrics",
    "save_dashboards",
    "save_latent_dashboard",
    "save_sae",
    "save_summary_figure",
    "save_top_images_grid",
    "select_tokens",
    "summary_figure",
    "to_inference",
    "top_images_grid",
    "train_sae",
]
