"""Ground truth: sparse features planted in a HookedViT activation are recovered by harvest + train_sae.

The micro model's patch embedding is linear (``hook_embed`` = ``W_E · patch``), so images whose
patches are sparse sums of the pixel patterns ``pinv(W_E) f_i`` give ``hook_embed`` rows that are
exactly sparse sums of the planted directions ``f_i``. The rows reach the SAE through our own code
path: `iter_activations` (token selection, early stop), `activation_stream` (epochs, shuffling),
`SAETrainConfig` → sae-lens' trainer, and `to_inference`.
"""

from __future__ import annotations

import time

import torch
from einops import rearrange
from scipy.optimize import linear_sum_assignment

from tests.micro import micro_model
from vit_interp.sae import SAETrainConfig, train_sae

N_FEATURES = 40
ACTIVE = 3  # mean active features per row


def planted_images(model, features: torch.Tensor, n_images: int, seed: int) -> torch.Tensor:
    """Images whose every patch embeds to a sparse non-negative sum of ``features`` (rows of [n, d_model])."""
    cfg = model.cfg
    generator = torch.Generator().manual_seed(seed)
    w_e = rearrange(model.embed.W_E.detach(), "d c ph pw -> d (c ph pw)")
    patterns = features @ torch.linalg.pinv(w_e).T  # [n_features, pixels]: W_E · pattern_i = f_i
    n_rows = n_images * cfg.n_patches
    fires = torch.rand(n_rows, len(features), generator=generator) < ACTIVE / len(features)
    magnitude = 0.5 + torch.rand(n_rows, len(features), generator=generator)
    patches = (fires * magnitude) @ patterns
    (ph, pw), (gh, gw) = cfg.patch_size, cfg.grid_size
    return rearrange(patches, "(b gh gw) (c ph pw) -> b c (gh ph) (gw pw)", b=n_images, gh=gh, gw=gw, ph=ph, pw=pw,
                     c=cfg.in_channels)


def test_topk_sae_recovers_planted_features_through_our_harvest_and_training() -> None:
    model = micro_model(n_layers=1)
    with torch.no_grad():
        model.embed.b_E.zero_()
    features = torch.nn.functional.normalize(torch.randn(N_FEATURES, model.cfg.d_model,
                                                         generator=torch.Generator().manual_seed(1)), dim=-1)
    images = planted_images(model, features, n_images=1500, seed=2)  # 24 000 patch rows
    with torch.no_grad():  # the planting is exact: the hook sees sparse sums of the features
        embedded = model.run_with_cache(images[:2], names_filter="hook_embed")[1]["hook_embed"][:, 1:]
    assert embedded.shape[-1] == model.cfg.d_model

    config = SAETrainConfig(architecture="topk", d_sae=2 * N_FEATURES, k=ACTIVE, batch_size=512, epochs=12,
                            lr=4e-3, seed=0)
    start = time.perf_counter()
    sae, summary = train_sae(model, "hook_embed", images, config, tokens="patches", eval_data=images[:200],
                             progress=False)
    seconds = time.perf_counter() - start

    cosine = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1) @ features.T  # [d_sae, n_features]
    rows, cols = linear_sum_assignment(-cosine.numpy())
    matched = cosine[rows, cols]
    recovered = float((matched > 0.9).float().mean())
    assert recovered >= 0.9, f"only {recovered:.0%} of planted features recovered (median cos {matched.median():.3f})"
    assert summary["held_out"]["explained_variance"] > 0.8
    assert summary["n_train_rows"] == 1500 * model.cfg.n_patches and sae.cfg.metadata.hook_name == "hook_embed"
    print(f"recovered {recovered:.0%}, median matched cosine {matched.median():.3f}, "
          f"EV {summary['held_out']['explained_variance']:.3f}, {summary['steps']} steps in {seconds:.1f} s")
