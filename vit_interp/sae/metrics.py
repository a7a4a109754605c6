"""How good an SAE is on a dataset: reconstruction, sparsity, and what splicing it does downstream.

`evaluate_sae` streams over the data once. Per batch it runs the model twice with the SAE spliced at
its hook: once passing the original activation on (``feed_stream=False``: the clean model, bit for
bit) while capturing the hook's activation, and once with the reconstruction replacing the
activation (no error term) at the evaluated tokens. Reconstruction metrics use sae-lens' streaming
calculators (`ExplainedVarianceCalculator`, `L0Calculator`, `DeadLatentsCalculator`,
`ShrinkageCalculator`) on the selected rows; sae-lens' own ``run_evals`` needs a language model.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from einops import rearrange
from sae_lens.evals import ExplainedVarianceCalculator
from sae_lens.synthetic import DeadLatentsCalculator, L0Calculator, ShrinkageCalculator
from torch import Tensor

from vit_interp.data import ImageDataset, model_batches
from vit_interp.errors import ConfigError, DataError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT
from vit_interp.sae.harvest import check_tokens, n_prefix_tokens, select_tokens
from vit_interp.stats import mean_with_ci

DENSE_THRESHOLD = 0.1  # a latent firing on more than this fraction of rows counts as dense


@dataclass
class SAEEvaluation:
    """Metrics of one SAE on one dataset. CIs are percentile-bootstrap 95% over images.

    Reconstruction metrics are over the SAE's rows (``tokens`` of each image):
    ``explained_variance`` is sae-lens' ``1 - E||x - x̂||² / Var(x)``; ``mse`` is the mean squared
    error per element and ``mse_per_row`` sae-lens' convention (``||x - x̂||²`` summed over
    dimensions, averaged over rows); ``cosine_similarity`` is the mean cosine of ``x`` and ``x̂``;
    ``l0`` the mean number of non-zero latents per row; ``shrinkage`` the mean ``||x̂|| / ||x||``
    (sae-lens' ``ShrinkageCalculator``; 1 is no shrinkage); ``dead_fraction`` the fraction of
    latents that never fired on these rows and ``dense_fraction`` those firing on more than
    ``dense_threshold`` of them. ``firing_frequency`` is each latent's firing rate.

    Downstream metrics compare the model with the SAE's reconstruction replacing the activation (no
    error term) to the clean model: accuracies and the paired per-image difference
    ``delta_accuracy = spliced - clean``. With a gate, both runs are gated and
    ``decision_agreement`` is the fraction of (image, gated layer, head) keep decisions that are
    the same, ``mask_agreement`` the fraction of images whose whole mask is the same.
    """

    hook_name: str
    tokens: str
    n_images: int
    n_rows: int
    d_sae: int
    explained_variance: float
    mse: float
    mse_per_row: float
    cosine_similarity: float
    l0: float
    shrinkage: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    accuracy_clean: float
    accuracy_clean_ci: tuple[float, float]
    accuracy_spliced: float
    accuracy_spliced_ci: tuple[float, float]
    delta_accuracy: float
    delta_accuracy_ci: tuple[float, float]
    gate_layers: Optional[list[int]] = None
    decision_agreement: Optional[float] = None
    mask_agreement: Optional[float] = None
    mask_agreement_ci: Optional[tuple[float, float]] = None
    usage_clean: Optional[float] = None
    usage_spliced: Optional[float] = None
    firing_frequency: Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``firing_frequency`` left out: it has one entry per latent)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "firing_frequency"}
        return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SAEEvaluation":
        """Rebuild from `to_dict` output (e.g. a card); ``firing_frequency`` is not stored there."""
        fields = {key: tuple(value) if key.endswith("_ci") and value is not None else value
                  for key, value in data.items() if key in cls.__dataclass_fields__}
        return cls(**fields)

    def to_markdown(self) -> str:
        """A two-column table of the metrics."""
        def ci(interval: Optional[tuple[float, float]], percent: bool = True) -> str:
            if interval is None:
                return ""
            return f" [{interval[0]:.2%}, {interval[1]:.2%}]" if percent else f" [{interval[0]:.3f}, {interval[1]:.3f}]"

        rows = [
            ("hook / tokens", f"`{self.hook_name}` / {self.tokens}"),
            ("images / rows / latents", f"{self.n_images} / {self.n_rows} / {self.d_sae}"),
            ("explained variance", f"{self.explained_variance:.4f}"),
            ("MSE per element / per row", f"{self.mse:.4g} / {self.mse_per_row:.4g}"),
            ("cosine similarity", f"{self.cosine_similarity:.4f}"),
            ("mean L0", f"{self.l0:.2f}"),
            ("shrinkage ‖x̂‖/‖x‖", f"{self.shrinkage:.4f}"),
            ("dead latents (never fired)", f"{self.dead_fraction:.2%}"),
            (f"dense latents (fire on > {self.dense_threshold:.0%} of rows)", f"{self.dense_fraction:.2%}"),
            ("accuracy clean", f"{self.accuracy_clean:.2%}{ci(self.accuracy_clean_ci)}"),
            ("accuracy with SAE (no error term)", f"{self.accuracy_spliced:.2%}{ci(self.accuracy_spliced_ci)}"),
            ("Δ accuracy (paired)", f"{self.delta_accuracy:+.2%}{ci(self.delta_accuracy_ci)}"),
        ]
        if self.gate_layers is not None:
            rows += [
                (f"gate decisions unchanged (layers {self.gate_layers})", f"{self.decision_agreement:.2%}"),
                ("images with the same head mask", f"{self.mask_agreement:.2%}{ci(self.mask_agreement_ci)}"),
                ("head usage clean / with SAE", f"{self.usage_clean:.3f} / {self.usage_spliced:.3f}"),
            ]
        lines = ["| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {value} |" for name, value in rows]
        return "\n".join(lines)


@torch.no_grad()
def evaluate_sae(
    model: HookedViT,
    sae: Any,
    dataset: Any,
    tokens: Any = "cls",
    batch_size: int = 256,
    gate: Optional[HeadGate] = None,
    progress: bool = True,
    dense_threshold: float = DENSE_THRESHOLD,
    n_resamples: int = 1000,
) -> SAEEvaluation:
    """Evaluate ``sae`` (spliced at ``sae.cfg.metadata.hook_name``) on ``dataset`` in one pass.

    The model is put in eval mode (deterministic gate decisions). Hooks and SAEs already on the
    model stay active; an SAE already spliced at the same hook is set aside during the evaluation.

    Args:
        model: The classifier.
        sae: A sae-lens SAE with ``cfg.metadata.hook_name`` set.
        dataset: An `ImageDataset` (images in [0, 1], labels).
        tokens: The SAE's rows and the positions its reconstruction replaces: ``cls``, ``patches``
            or ``all`` (as the SAE was trained).
        batch_size: Images per forward pass.
        gate: A `HeadGate` for ``model``: both runs are gated and decision agreement is reported.
            It may already be attached to the model.
        progress: Show a progress bar.
        dense_threshold: Firing rate above which a latent counts as dense.
        n_resamples: Bootstrap resamples of the CIs.
    """
    if not isinstance(dataset, ImageDataset):
        raise DataError(f"dataset must be a vit_interp.data.ImageDataset, got {type(dataset).__name__}; "
                        "load one with vit_interp.data.load_dataset")
    if len(dataset) == 0:
        raise DataError("the dataset is empty; pass at least one image")
    check_tokens(tokens)
    model._check_sae(sae)
    hook_name = getattr(sae.cfg.metadata, "hook_name", None)
    if not hook_name:
        raise ConfigError("the SAE has no cfg.metadata.hook_name; set it to the hook the SAE was trained on")
    if not 0 < dense_threshold < 1:
        raise ConfigError(f"dense_threshold must be in (0, 1), got {dense_threshold}")
    model.eval()
    d_sae = sae.cfg.d_sae
    flatten_heads = getattr(sae.cfg, "reshape_activations", "none") == "hook_z"
    n_prefix = n_prefix_tokens(model)
    variance, l0, shrinkage = ExplainedVarianceCalculator(), L0Calculator(), ShrinkageCalculator()
    dead = DeadLatentsCalculator(d_sae)
    fired = torch.zeros(d_sae, dtype=torch.float64)
    squared_error, n_elements, cosine_sum, n_rows = 0.0, 0, 0.0, 0
    correct_clean, correct_spliced, masks_clean, masks_spliced = [], [], [], []
    captured: list[Tensor] = []
    labels = dataset.labels

    def grab(activation: Tensor, hook: Any) -> None:
        captured.append(activation)

    with (gate.attached(model) if gate is not None else contextlib.nullcontext()):  # attached() never gates twice
        with model.saes([sae], use_error_term=False, tokens=tokens):
            spliced = model.spliced(hook_name)
            start = 0
            for images in model_batches(dataset.images, model.cfg, model.embed.W_E.device, batch_size, "evaluate SAE", progress):
                batch_labels = labels[start: start + len(images)].to(images.device)
                start += len(images)
                spliced.feed_stream = False  # the clean model (the SAE's path is not even computed)
                logits = model.run_with_hooks(images, fwd_hooks=[(hook_name, grab)])
                correct_clean.append((logits.argmax(-1) == batch_labels).cpu())
                if gate is not None:
                    masks_clean.append(torch.stack([gate.last_masks[l] for l in gate.layers], dim=1).cpu())
                spliced.feed_stream = True
                logits = model(images)
                correct_spliced.append((logits.argmax(-1) == batch_labels).cpu())
                if gate is not None:
                    masks_spliced.append(torch.stack([gate.last_masks[l] for l in gate.layers], dim=1).cpu())

                activation = captured.pop()
                if flatten_heads:
                    activation = rearrange(activation, "... h e -> ... (h e)")
                if activation.ndim == 2 and tokens == "all":
                    rows = activation  # a hook without a position axis (e.g. hook_pooled)
                else:
                    rows = select_tokens(activation, tokens, n_prefix)
                rows = rows.to(sae.W_dec.device)
                acts = sae.encode(rows)
                recon = sae.decode(acts).to(rows.dtype)
                variance.add_batch(recon, rows)
                l0.add_batch(acts)
                dead.add_batch(acts)
                shrinkage.add_batch(recon, rows)
                fired += (acts != 0).sum(0).double().cpu()
                squared_error += float((recon.double() - rows.double()).pow(2).sum())
                n_elements += rows.numel()
                cosine_sum += float(torch.nn.functional.cosine_similarity(recon.double(), rows.double(), dim=-1).sum())
                n_rows += len(rows)

    clean = torch.cat(correct_clean).double()
    with_sae = torch.cat(correct_spliced).double()
    accuracy_clean, *clean_ci = mean_with_ci(clean, n_resamples, seed=1)
    accuracy_spliced, *spliced_ci = mean_with_ci(with_sae, n_resamples, seed=2)
    # Paired: resampling images keeps each image's clean and spliced outcome together.
    delta, *delta_ci = mean_with_ci(with_sae - clean, n_resamples, seed=3)
    frequency = (fired / n_rows).float()
    result = SAEEvaluation(
        hook_name=hook_name, tokens=tokens, n_images=len(dataset), n_rows=n_rows, d_sae=d_sae,
        explained_variance=variance.compute(), mse=squared_error / n_elements,
        mse_per_row=squared_error / n_rows, cosine_similarity=cosine_sum / n_rows, l0=l0.compute(),
        shrinkage=shrinkage.compute(), dead_fraction=dead.compute() / d_sae,
        dense_fraction=float((frequency > dense_threshold).double().mean()), dense_threshold=dense_threshold,
        accuracy_clean=accuracy_clean, accuracy_clean_ci=tuple(clean_ci), accuracy_spliced=accuracy_spliced,
        accuracy_spliced_ci=tuple(spliced_ci), delta_accuracy=delta, delta_accuracy_ci=tuple(delta_ci),
        firing_frequency=frequency,
    )
    if gate is not None:
        before, after = torch.cat(masks_clean), torch.cat(masks_spliced)
        same_image = (before == after).flatten(1).all(1).double()
        result.gate_layers = list(gate.layers)
        result.decision_agreement = float((before == after).double().mean())
        result.mask_agreement, *mask_ci = mean_with_ci(same_image, n_resamples, seed=4)
        result.mask_agreement_ci = tuple(mask_ci)  # type: ignore[assignment]
        result.usage_clean = float(before.double().mean())
        result.usage_spliced = float(after.double().mean())
    return result
