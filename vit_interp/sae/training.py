"""Training a sae-lens SAE on HookedViT activations with sae-lens' own `SAETrainer`.

`SAETrainConfig` holds the few settings that matter and builds sae-lens' two configs from them (the
training-SAE config and `SAETrainerConfig`), with the pitfalls handled: ``lr_end`` set, the trainer's
batch size equal to the real one, no wandb, no checkpoints, a dead-feature window scaled to the run.
`train_sae` streams shuffled activations (`activation_stream`, or disk shards) into the trainer and
returns the SAE in inference form, as ``save_inference_model`` writes it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor

from vit_interp.errors import ConfigError, DataError
from vit_interp.hooked_vit import HookedViT
from vit_interp.sae.harvest import (
    ActivationShards,
    _as_images,
    activation_stream,
    check_tokens,
    hook_width,
    iter_activations,
    memory_stream,
    model_fingerprint,
    rows_per_image,
)

if TYPE_CHECKING:
    from sae_lens import SAE, TrainingSAE
    from sae_lens.config import SAETrainerConfig

logger = logging.getLogger(__name__)

ARCHITECTURES = ("topk", "standard", "batchtopk", "jumprelu", "matryoshka")
NORMALIZATIONS = ("expected_average_only_in", "none")
Number = Union[float, int]
NORM_ESTIMATE_ROWS = 32_768


@dataclass
class SAETrainConfig:
    """Settings of `train_sae`; `sae_config` and `trainer_config` turn them into sae-lens' configs.

    Args:
        architecture: ``topk`` (default; exactly ``k`` latents per row), ``standard`` (ReLU + L1),
            ``batchtopk`` (``k`` per row on average over a batch), ``jumprelu`` (L0 penalty) or
            ``matryoshka`` (nested BatchTopK dictionaries). BatchTopK and Matryoshka become JumpReLU
            SAEs at inference (sae-lens has no inference class for them).
        d_sae: Number of latents (default: ``expansion_factor * d_in``).
        expansion_factor: Latents per input dimension when ``d_sae`` is not given.
        k: Active latents per row (``topk``, ``batchtopk``, ``matryoshka``).
        l1_coefficient: Sparsity weight of ``standard``.
        l0_coefficient: Sparsity weight of ``jumprelu``.
        lr: Peak Adam learning rate.
        lr_end: Learning rate at the end of the cosine schedule (default ``lr / 10``).
        warmup_fraction: Fraction of the steps spent warming the learning rate (and the L1/L0
            coefficient) up linearly.
        epochs: Passes over the training rows (default 10 when ``samples`` is not given either).
        samples: Training rows in total, instead of ``epochs``.
        batch_size: Rows per step.
        normalize_activations: ``expected_average_only_in`` (scale rows to mean norm sqrt(d_in) while
            training, folded into the weights afterwards) or ``none``.
        dead_feature_window: Steps without firing after which a latent counts as dead (feeds the
            TopK/Matryoshka auxiliary loss); default a quarter of the run, between 10 and 1000.
        matryoshka_widths: Nested dictionary sizes for ``matryoshka`` (default ``d_sae/8, /4, /2, d_sae``).
        seed: Seeds the SAE initialisation and the data order.
        device: Where the SAE trains (``cpu``, ``cuda``, ...).
        memory_cache_mb: When all training rows (float32) fit in this many MiB, they are harvested
            once and reused every epoch (`memory_stream`) instead of re-running the model per epoch
            (`activation_stream`); 0 always streams live.
    """

    architecture: str = "topk"
    d_sae: Optional[int] = None
    expansion_factor: int = 8
    k: int = 16
    l1_coefficient: Number = 1.0
    l0_coefficient: Number = 1.0
    lr: Number = 1e-3
    lr_end: Optional[Number] = None
    warmup_fraction: Number = 0.05
    epochs: Optional[Number] = None
    samples: Optional[int] = None
    batch_size: int = 1024
    normalize_activations: str = "expected_average_only_in"
    dead_feature_window: Optional[int] = None
    matryoshka_widths: Optional[list[int]] = None
    seed: int = 0
    device: str = "cpu"
    memory_cache_mb: Number = 1024

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"unknown SAE architecture {self.architecture!r}; choose one of {list(ARCHITECTURES)}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalize_activations {self.normalize_activations!r}; "
                              f"choose one of {list(NORMALIZATIONS)}")
        if self.epochs is not None and self.samples is not None:
            raise ConfigError("give either epochs or samples, not both")
        for name in ("batch_size", "expansion_factor", "k", "d_sae", "samples", "dead_feature_window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "lr_end", "epochs", "l1_coefficient", "l0_coefficient"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not self.memory_cache_mb >= 0:
            raise ConfigError(f"memory_cache_mb must be >= 0 (0 streams live), got {self.memory_cache_mb}")

    # sae-lens configs ----------------------------------------------------------------------------
    def width(self, d_in: int) -> int:
        """``d_sae``, or ``expansion_factor * d_in``."""
        return self.d_sae if self.d_sae is not None else self.expansion_factor * d_in

    def total_samples(self, n_rows: int) -> int:
        """Training rows in total: ``samples``, or ``epochs * n_rows``, rounded to whole batches (at least one)."""
        wanted = self.samples if self.samples is not None else (self.epochs or 10.0) * n_rows
        return max(1, round(wanted / self.batch_size)) * self.batch_size

    def sae_config(self, d_in: int, metadata: Optional[dict[str, Any]] = None, steps: int = 0) -> Any:
        """The sae-lens training-SAE config (e.g. `TopKTrainingSAEConfig`) for inputs of width ``d_in``.

        ``metadata`` goes into ``cfg.metadata`` (set ``hook_name`` there: sae-lens keys on it);
        ``steps`` (the run's length) sets the L1/L0 coefficient warm-up.
        """
        import sae_lens as sl
        from sae_lens.saes.sae import SAEMetadata

        d_sae = self.width(d_in)
        if self.architecture in ("topk", "batchtopk", "matryoshka") and self.k > d_sae:
            raise ConfigError(f"k={self.k} is larger than d_sae={d_sae}; lower k or widen the SAE")
        common = dict(d_in=d_in, d_sae=d_sae, device=self.device, normalize_activations=self.normalize_activations,
                      metadata=SAEMetadata(**(metadata or {})))
        warm_up = self._warmup_steps(steps)
        if self.architecture == "topk":
            return sl.TopKTrainingSAEConfig(k=self.k, **common)
        if self.architecture == "batchtopk":
            return sl.BatchTopKTrainingSAEConfig(k=float(self.k), **common)
        if self.architecture == "matryoshka":
            widths = self.matryoshka_widths or sorted({max(self.k, d_sae // 8), max(self.k, d_sae // 4), max(self.k, d_sae // 2), d_sae})
            if widths != sorted(set(widths)) or widths[-1] != d_sae or widths[0] <= 0:
                raise ConfigError(f"matryoshka_widths {widths} must increase strictly and end at d_sae={d_sae}")
            return sl.MatryoshkaBatchTopKTrainingSAEConfig(k=float(self.k), matryoshka_widths=list(widths), **common)
        if self.architecture == "standard":
            return sl.StandardTrainingSAEConfig(l1_coefficient=self.l1_coefficient, l1_warm_up_steps=warm_up, **common)
        return sl.JumpReLUTrainingSAEConfig(l0_coefficient=self.l0_coefficient, l0_warm_up_steps=warm_up, **common)

    def trainer_config(self, n_rows: int) -> "SAETrainerConfig":
        """sae-lens' `SAETrainerConfig` for ``n_rows`` training rows (one epoch)."""
        from sae_lens import LoggingConfig
        from sae_lens.config import SAETrainerConfig

        total = self.total_samples(n_rows)
        steps = total // self.batch_size
        dead_window = self.dead_feature_window or min(1000, max(10, steps // 4))
        return SAETrainerConfig(
            total_training_samples=total,
            train_batch_size_samples=self.batch_size,  # must equal the real batch: rebatch() guarantees it
            lr=self.lr,
            lr_end=self.lr_end if self.lr_end is not None else self.lr / 10,  # sae-lens asserts it is set
            lr_scheduler_name="cosineannealing",
            lr_warm_up_steps=self._warmup_steps(steps),
            device=self.device,
            dead_feature_window=dead_window,
            feature_sampling_window=max(2 * dead_window, 1),
            # The mean norm is estimated well from ~32k rows; sae-lens' default (1000 batches, sized for
            # language models) would harvest far more rows than a short vision run trains on.
            n_batches_for_norm_estimate=max(1, math.ceil(min(n_rows, NORM_ESTIMATE_ROWS) / self.batch_size)),
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
            logger=LoggingConfig(log_to_wandb=False),
        )

    def _warmup_steps(self, steps: int) -> int:
        return round(self.warmup_fraction * steps)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (for cards)."""
        return dataclasses.asdict(self)


# Training -----------------------------------------------------------------------------------------
def _recording_trainer(cfg: "SAETrainerConfig", sae: "TrainingSAE", data: Iterator[Tensor], every: int) -> Any:
    from sae_lens import SAETrainer

    class RecordingTrainer(SAETrainer):
        """`SAETrainer` that checks each batch and keeps a loss curve (``step`` is sae-lens' documented seam)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.history: list[dict[str, float]] = []

        def step(self, batch: Tensor) -> Any:
            if batch.shape[0] != self.cfg.train_batch_size_samples:
                raise DataError(f"batch of {batch.shape[0]} rows but the trainer expects "
                                f"{self.cfg.train_batch_size_samples}; the stream must yield full batches")
            out = super().step(batch)
            step = self.n_training_steps  # fit() increments it after step() returns
            if step % every == 0 or step + 1 == self.cfg.total_training_steps:
                record = {"step": step + 1, "samples": self.n_training_samples, "loss": out.loss.item(),
                          "l0": float((out.feature_acts != 0).float().sum(-1).mean()),
                          "lr": float(self.optimizer.param_groups[0]["lr"])}
                record.update({name: float(torch.as_tensor(value).detach()) for name, value in out.losses.items()})
                self.history.append(record)
            return out

    return RecordingTrainer(cfg=cfg, sae=sae, data_provider=data)


@contextmanager
def _sae_lens_progress(enabled: bool) -> Iterator[None]:
    """Hide sae-lens' own progress bars when ``enabled`` is False.

    sae-lens creates its bars unconditionally and tqdm reads ``TQDM_DISABLE`` only at import, so the
    module-level ``tqdm`` names are swapped for the duration (restored afterwards).
    """
    if enabled:
        yield
        return
    from sae_lens.training import activation_scaler, sae_trainer

    saved = {module: module.tqdm for module in (sae_trainer, activation_scaler)}
    try:
        for module, bar in saved.items():
            module.tqdm = partial(bar, disable=True)
        yield
    finally:
        for module, bar in saved.items():
            module.tqdm = bar


def to_inference(sae: Any) -> "SAE":
    """The inference form of a training SAE: exactly what ``save_inference_model`` writes, loaded back
    with ``SAE.load_from_disk`` (TopK folds decoder norms; BatchTopK/Matryoshka become JumpReLU)."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory(prefix="vit-interp-sae-") as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp, device=str(sae.device))


def _source(model: HookedViT, hook_name: str, data: Any, tokens: str) -> tuple[Optional[Tensor], Optional[ActivationShards]]:
    if isinstance(data, ActivationShards):
        data.check(model, hook_name, tokens)
        return None, data
    return _as_images(data), None


def _rows_of(model: HookedViT, hook_name: str, data: Any, tokens: str, batch_size: int = 256) -> Iterable[Tensor]:
    images, shards = _source(model, hook_name, data, tokens)
    if shards is not None:
        return shards.chunks()
    return iter_activations(model, hook_name, images, tokens, batch_size, progress=False)


@torch.no_grad()
def reconstruction_metrics(sae: Any, rows: Iterable[Float[Tensor, "rows d"]]) -> dict[str, float]:
    """Explained variance, MSE (per element), L0 and dead-latent fraction of ``sae`` on ``rows``.

    Uses sae-lens' streaming calculators (`ExplainedVarianceCalculator`, `L0Calculator`,
    `DeadLatentsCalculator`); sae-lens' own ``run_evals`` needs a language model.
    """
    from sae_lens.evals import ExplainedVarianceCalculator
    from sae_lens.synthetic.evals import DeadLatentsCalculator, L0Calculator

    variance, l0, dead = ExplainedVarianceCalculator(), L0Calculator(), DeadLatentsCalculator(sae.cfg.d_sae)
    squared_error, n_elements, n_rows = 0.0, 0, 0
    was_training = sae.training
    sae.eval()
    for chunk in rows:
        chunk = chunk.to(sae.device, sae.dtype)
        acts = sae.encode(chunk)
        recon = sae.decode(acts)
        variance.add_batch(recon, chunk)
        l0.add_batch(acts)
        dead.add_batch(acts)
        squared_error += float((recon.double() - chunk.double()).pow(2).sum())
        n_elements += chunk.numel()
        n_rows += len(chunk)
    sae.train(was_training)
    if n_rows == 0:
        raise DataError("no rows to evaluate the SAE on; pass at least one image")
    return {"explained_variance": variance.compute(), "mse": squared_error / n_elements, "l0": l0.compute(),
            "dead_fraction": dead.compute() / sae.cfg.d_sae, "n_rows": n_rows}


def train_sae(
    model: HookedViT,
    hook_name: str,
    data: Any,
    config: Optional[SAETrainConfig] = None,
    tokens: str = "cls",
    progress: bool = True,
    eval_data: Any = None,
) -> tuple["SAE", dict[str, Any]]:
    """Train a sae-lens SAE on ``hook_name`` activations of a frozen ``model``.

    Rows are harvested live (forward passes stop at the hooked block), shuffled in a bounded buffer,
    epoch after epoch, or streamed from disk shards (`harvest_to_disk`); sae-lens' `SAETrainer` does
    the optimisation. The result is seeded: same seed, same SAE on CPU.

    Args:
        model: The model (left unchanged; hooks already on it stay active while harvesting).
        hook_name: A ``[batch, pos, d]`` hook, e.g. ``blocks.5.hook_resid_pre``.
        data: Training images (``[n, c, h, w]`` in [0, 1]), an `ImageDataset`, or `ActivationShards`
            harvested from this model at this hook and tokens.
        config: Settings (default `SAETrainConfig()`).
        tokens: ``cls``, ``patches`` or ``all``.
        progress: Show sae-lens' progress bars (training, normalisation estimate).
        eval_data: Held-out images/dataset/shards; when given, the summary reports reconstruction
            metrics on them (`reconstruction_metrics`).

    Returns:
        The trained SAE in inference form (``cfg.metadata.hook_name`` set, plus ``tokens`` and the
        model fingerprint), and a JSON-ready summary: ``settings``, ``history`` (loss curve),
        ``train`` (trainer's final L0 and dead fraction), ``held_out`` (metrics or None), timings.
    """
    config = config or SAETrainConfig()
    if not isinstance(config, SAETrainConfig):
        raise ConfigError(f"config must be an SAETrainConfig, got {type(config).__name__}")
    check_tokens(tokens)
    model.check_hook_name(hook_name)
    images, shards = _source(model, hook_name, data, tokens)
    d_in = shards.d if shards is not None else hook_width(model, hook_name, tokens)
    n_rows = shards.rows if shards is not None else len(images) * rows_per_image(model, tokens)
    if n_rows == 0:
        raise DataError("no training rows; pass at least one image")
    fingerprint = model_fingerprint(model)
    metadata = {"hook_name": hook_name, "tokens": tokens, "model_config_sha256": fingerprint["config_sha256"],
                "model_weights_sha256": fingerprint["weights_sha256"]}
    trainer_cfg = config.trainer_config(n_rows)
    sae_cfg = config.sae_config(d_in, metadata, steps=trainer_cfg.total_training_steps)

    start = time.perf_counter()
    was_training = model.training
    model.eval()  # harvest what the model computes in use
    try:
        with torch.random.fork_rng(devices=[]), _sae_lens_progress(progress), torch.enable_grad():
            torch.manual_seed(config.seed)  # sae-lens initialises weights from the global RNG
            sae = _training_sae(sae_cfg)
            if shards is not None:
                stream = shards.batches(config.batch_size, seed=config.seed)
            elif n_rows * d_in * 4 <= config.memory_cache_mb * 2**20:
                rows = torch.cat(list(iter_activations(model, hook_name, images, tokens, progress=progress)))
                stream = memory_stream(rows, config.batch_size, seed=config.seed)
            else:
                stream = activation_stream(model, hook_name, images, tokens, config.batch_size, seed=config.seed)
            trainer = _recording_trainer(trainer_cfg, sae, stream, every=max(1, trainer_cfg.total_training_steps // 100))
            trained = trainer.fit()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    inference = to_inference(trained)
    logger.info("trained %s SAE on %s (%d steps, %.1f s)", config.architecture, hook_name,
                trainer_cfg.total_training_steps, seconds)
    summary: dict[str, Any] = {
        "hook_name": hook_name, "tokens": tokens, "d_in": d_in, "d_sae": inference.cfg.d_sae,
        "architecture": config.architecture, "inference_architecture": inference.cfg.architecture(),
        "n_train_rows": n_rows, "steps": trainer_cfg.total_training_steps, "samples": trainer.n_training_samples,
        "train_seconds": seconds, "samples_per_second": trainer.n_training_samples / max(seconds, 1e-9),
        "settings": config.to_dict(), "history": trainer.history,
        "train": {"l0": trained.cfg.metadata.l0,
                  "dead_fraction": (trained.cfg.metadata.num_dead_features or 0) / inference.cfg.d_sae},
        "held_out": None,
    }
    if eval_data is not None:
        summary["held_out"] = reconstruction_metrics(inference, _rows_of(model, hook_name, eval_data, tokens))
    return inference, summary


def _training_sae(sae_cfg: Any) -> "TrainingSAE":
    from sae_lens import TrainingSAE

    cls = TrainingSAE.get_sae_class_for_architecture(sae_cfg.architecture())
    return cls(sae_cfg)
