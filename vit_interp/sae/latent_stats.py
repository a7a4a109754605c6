"""Per-latent statistics of an SAE over a labelled dataset, from one streaming pass.

Everything a latent dashboard or a class-selectivity ranking needs is accumulated in memory that grows
with ``d_sae`` (and ``n_classes``, ``top_k``, ``n_bins``), never with the number of images: running
top-k (value, image, position) per latent, firing counts, per-class firing counts and activation
sums / sums of squares, and a histogram on one fixed log-spaced bin grid shared by every latent.

**Per-image activation.** Every statistic is per image. With ``tokens='cls'`` an image's activation of
latent ``j`` is its CLS row's; with ``tokens='patches'`` or ``'all'`` it is the maximum over the image's
positions (and `LatentStatistics.top_positions` records where that maximum is), so an image counts
once per latent and class statistics stay "per image" whatever the token selection. Activations are
read as magnitudes ``|a|``: identical for the non-negative SAEs (ReLU, TopK, JumpReLU, Gated), and a
strength for AbsTopK's signed latents. A latent *fires* on an image when its activation is non-zero.

**Selectivity score.** For class ``c`` and latent ``j``, ``μ[c, j]`` is the mean activation over the
class's images (zeros included) and the score is the class-balanced share of activation mass
``share[c, j] = μ[c, j] / Σ_c' μ[c', j]``. Chance (no preference) is ``1 / n_classes``; 1 means the latent
is active on that class only. Why this score: it is exact from one pass (class sums); it weighs how
strongly a latent fires, which is what steering rescales; averaging per class makes it independent of
class frequency; and unlike a one-vs-rest AUROC it is not dominated by the firing rate of a sparse
latent (a latent that fires on 2% of one class and nothing else has AUROC 0.51 but share 1.0). Rare
latents get high shares by chance, hence ``min_firing`` filters and a standard error: the delta method
on the ratio of independent class means, ``Var μ_c ≈ s²_c / n_c`` from the per-class sums of squares
(it agrees with a stratified bootstrap; see the tests). The SE is 0 for a latent that never fires
outside one class, however few images it fired on; the count-based ``precision_low`` of the
selectivity table (Wilson 95% lower bound on the fraction of its firing images in the top class) is
the check for those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int64
from safetensors.torch import load_file
from torch import Tensor

from vit_interp.data import ImageDataset
from vit_interp.errors import ClassIndexError, ConfigError, DataError, LatentIndexError
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_tensors_atomic
from vit_interp.sae.harvest import check_tokens, iter_activations, n_prefix_tokens

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TENSOR_FILE, _META_FILE = "latent_stats.safetensors", "latent_stats.json"
_TENSORS = ("class_counts", "class_fire_counts", "class_act_sums", "class_act_sq_sums", "row_fire_counts",
            "hist_counts", "top_values", "top_images", "top_positions", "top_labels")


def wilson_lower_bound(successes: int, trials: int, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a proportion (NaN without trials): honest at 0 or n of n."""
    if trials == 0:
        return float("nan")
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / (1 + z * z / trials)


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """A short hash of labels, image shape and a strided pixel sample: dashboards refuse a different dataset.

    A sample (every 97th value) keeps this fast on large splits while still catching re-ordered,
    re-split or re-augmented images.
    """
    digest = hashlib.sha1(dataset.labels.cpu().numpy().tobytes())
    digest.update(repr(tuple(dataset.images.shape)).encode())
    digest.update(dataset.images.reshape(-1)[::97].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_labelled(dataset: Any) -> ImageDataset:
    """``dataset`` if it is a non-empty `ImageDataset` whose labels index its class names, else a `DataError`."""
    if not isinstance(dataset, ImageDataset):
        raise DataError(f"latent statistics need a labelled ImageDataset, got {type(dataset).__name__}; "
                        "wrap the images as ImageDataset(images, labels, class_names)")
    if len(dataset) == 0 or dataset.n_classes == 0:
        raise DataError(f"dataset {dataset.name or '?'} has no images or no class names; pass a labelled, non-empty split")
    labels = dataset.labels
    if labels.dtype != torch.int64 or int(labels.min()) < 0 or int(labels.max()) >= dataset.n_classes:
        raise DataError(f"dataset {dataset.name or '?'} labels are not class indices in [0, {dataset.n_classes}) "
                        "(unlabelled data?); class statistics need a label for every image")
    return dataset


@dataclass
class LatentStatistics:
    """One-pass statistics of every latent of an SAE over a labelled dataset (see the module docstring).

    Tensors (on CPU): ``class_counts [C]`` images per class; ``class_fire_counts [C, d_sae]`` images of
    the class on which the latent fires; ``class_act_sums`` / ``class_act_sq_sums [C, d_sae]`` (float64)
    sums of per-image activations and their squares; ``row_fire_counts [d_sae]`` firing rows (tokens);
    ``hist_counts [d_sae, n_bins]`` firing images per bin of `hist_edges` (values outside ``hist_range``
    are counted in the first/last bin); ``top_values / top_images / top_positions / top_labels
    [d_sae, top_k]``, sorted by decreasing activation, ties to the lower image index, ``-1`` (value 0)
    where the latent fired on fewer than ``top_k`` images. ``top_positions`` are token positions in the
    hooked activation (0 = CLS; patch ``p`` is position ``n_prefix + p``).
    """

    hook_name: str
    tokens: str
    class_names: list[str]
    dataset_name: str
    split: str
    fingerprint: str
    n_images: int
    n_rows: int
    n_prefix: int
    patch_grid: tuple[int, int]
    model_image_size: tuple[int, int]
    hist_range: tuple[float, float]
    class_counts: Int64[Tensor, " n_classes"] = field(repr=False)
    class_fire_counts: Int64[Tensor, "n_classes d_sae"] = field(repr=False)
    class_act_sums: Float[Tensor, "n_classes d_sae"] = field(repr=False)
    class_act_sq_sums: Float[Tensor, "n_classes d_sae"] = field(repr=False)
    row_fire_counts: Int64[Tensor, " d_sae"] = field(repr=False)
    hist_counts: Int64[Tensor, "d_sae n_bins"] = field(repr=False)
    top_values: Float[Tensor, "d_sae top_k"] = field(repr=False)
    top_images: Int64[Tensor, "d_sae top_k"] = field(repr=False)
    top_positions: Int64[Tensor, "d_sae top_k"] = field(repr=False)
    top_labels: Int64[Tensor, "d_sae top_k"] = field(repr=False)

    # ---- shapes and basic rates -------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.class_fire_counts.shape[1]

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def top_k(self) -> int:
        """How many top images are kept per latent."""
        return self.top_values.shape[1]

    @property
    def hist_edges(self) -> Float[Tensor, " n_bins_plus_1"]:
        """Log-spaced bin edges of `hist_counts`."""
        low, high = self.hist_range
        return torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), self.hist_counts.shape[1] + 1,
                              dtype=torch.float64)

    @property
    def fire_counts(self) -> Int64[Tensor, " d_sae"]:
        """Images on which each latent fires."""
        return self.class_fire_counts.sum(0)

    @property
    def firing_rate(self) -> Float[Tensor, " d_sae"]:
        """Fraction of images on which each latent fires."""
        return self.fire_counts.double() / self.n_images

    @property
    def mean_active_activation(self) -> Float[Tensor, " d_sae"]:
        """Mean activation over the images where the latent fires (NaN for a dead latent)."""
        return self.class_act_sums.sum(0) / self.fire_counts.double()

    @property
    def dead_latents(self) -> Int64[Tensor, " n_dead"]:
        """Latents that never fire on this dataset."""
        return torch.nonzero(self.fire_counts == 0).flatten()

    # ---- selectivity ------------------------------------------------------------------------------
    @property
    def class_means(self) -> Float[Tensor, "n_classes d_sae"]:
        """Mean activation per class, zeros included (NaN rows for classes absent from the dataset)."""
        return self.class_act_sums / self.class_counts.double()[:, None]

    @property
    def class_share(self) -> Float[Tensor, "n_classes d_sae"]:
        """The selectivity score of every (class, latent): ``μ[c] / Σ μ`` over present classes (NaN: dead)."""
        means = self.class_means
        return means / torch.nansum(means, dim=0, keepdim=True)

    @property
    def class_share_se(self) -> Float[Tensor, "n_classes d_sae"]:
        """Delta-method standard error of `class_share` (class means treated as independent)."""
        n = self.class_counts.double()[:, None]
        means = self.class_means
        variance = (self.class_act_sq_sums - n * means**2) / (n - 1).clamp(min=1)
        var_mean = (variance.clamp(min=0) / n).nan_to_num(0.0)
        total = torch.nansum(means, dim=0, keepdim=True)
        var_share = ((total - means) ** 2 * var_mean + means**2 * (var_mean.sum(0, keepdim=True) - var_mean)) / total**4
        return var_share.sqrt()

    @property
    def top_class(self) -> Int64[Tensor, " d_sae"]:
        """The class each latent is most selective for (0 for a dead latent; its score is NaN)."""
        return self.class_share.nan_to_num(-1.0).argmax(0)

    @property
    def selectivity(self) -> Float[Tensor, " d_sae"]:
        """Each latent's score for its top class, in ``[1/n_classes, 1]`` (NaN: dead)."""
        return self.class_share.gather(0, self.top_class[None]).squeeze(0)

    def class_index(self, class_: Any) -> int:
        """A class name or index → index, or a one-line `ClassIndexError`."""
        if isinstance(class_, str):
            if class_ not in self.class_names:
                raise ClassIndexError(f"unknown class {class_!r}; choose one of {self.class_names}")
            return self.class_names.index(class_)
        if isinstance(class_, bool) or not isinstance(class_, int) or not 0 <= class_ < self.n_classes:
            raise ClassIndexError(f"class {class_!r} is not a class name or an index in [0, {self.n_classes})")
        return class_

    def check_latent(self, latent: Any) -> int:
        """``latent`` as an int in ``[0, d_sae)``, or a one-line `LatentIndexError`."""
        if isinstance(latent, Tensor) and latent.numel() == 1:
            latent = int(latent)
        if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < self.d_sae:
            raise LatentIndexError(f"latent {latent!r} is out of range; this SAE has latents 0..{self.d_sae - 1}")
        return latent

    def selectivity_table(self, min_firing: int = 10) -> "SelectivityTable":
        """Every latent firing on at least ``min_firing`` images, most class-selective first.

        Rows are sorted by score (descending), then firing count (descending), then latent index.
        """
        fire = self.fire_counts
        keep = torch.nonzero(fire >= max(1, min_firing)).flatten()
        score, top = self.selectivity, self.top_class
        order = sorted(keep.tolist(), key=lambda j: (-float(score[j]), -int(fire[j]), j))
        se = self.class_share_se.gather(0, top[None]).squeeze(0)
        rates = self.class_fire_counts.double() / self.class_counts.double()[:, None]
        mean_active = self.mean_active_activation
        rows = [{"latent": j, "top_class": self.class_names[int(top[j])], "top_class_index": int(top[j]),
                 "score": float(score[j]), "score_se": float(se[j]), "n_firing": int(fire[j]),
                 "firing_rate": int(fire[j]) / self.n_images, "mean_activation": float(mean_active[j]),
                 "precision": int(self.class_fire_counts[top[j], j]) / int(fire[j]),
                 "precision_low": wilson_lower_bound(int(self.class_fire_counts[top[j], j]), int(fire[j])),
                 "class_firing_rates": rates[:, j].tolist()} for j in order]
        return SelectivityTable(list(self.class_names), min_firing, self.d_sae, len(self.dead_latents), self.split, rows)

    def class_selective_latents(self, class_: Any, n: int = 5, min_firing: int = 10, min_class_rate: float = 0.0,
                                allow_test: bool = False) -> list[int]:
        """The ``n`` latents with the highest score for ``class_`` (a name or index), best first.

        Latents are ranked by ``class_share[class_]`` (ties: more firing images first) among those
        firing on at least ``min_firing`` images and on at least ``min_class_rate`` of the class's
        images (coverage: a perfectly specific latent that fires on 1% of a class steers little); a
        latent listed here need not have ``class_`` as its top class when fewer than ``n`` do.
        Latents chosen on test data would leak it into whatever uses them (e.g. per-class steering), so
        statistics of a ``test`` split are refused unless ``allow_test=True``.

        Args:
            class_: Class name or index.
            n: How many latents to return (fewer when fewer qualify).
            min_firing: Minimum number of images (any class) the latent fires on.
            min_class_rate: Minimum fraction of ``class_``'s images the latent fires on.
            allow_test: Accept statistics computed on the ``test`` split (analysis only).

        Returns:
            Latent indices, most selective first.
        """
        index = self.class_index(class_)
        if self.split == "test" and not allow_test:
            raise DataError("these statistics were computed on the test split; select latents on training data "
                            "(latent_statistics(..., load_dataset(name, 'train'))) or pass allow_test=True for analysis")
        share = self.class_share[index].nan_to_num(-1.0)
        fire = self.fire_counts
        class_rate = self.class_fire_counts[index].double() / max(1, int(self.class_counts[index]))
        candidates = torch.nonzero((fire >= max(1, min_firing)) & (class_rate >= min_class_rate)).flatten().tolist()
        return sorted(candidates, key=lambda j: (-float(share[j]), -int(fire[j]), j))[:n]

    # ---- persistence ------------------------------------------------------------------------------
    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``latent_stats.safetensors`` + ``latent_stats.json`` into ``folder`` (atomically); returns it."""
        folder = Path(folder)
        save_tensors_atomic({name: getattr(self, name) for name in _TENSORS}, folder / _TENSOR_FILE)
        meta = {"format_version": FORMAT_VERSION, "hook_name": self.hook_name, "tokens": self.tokens,
                "class_names": self.class_names, "dataset_name": self.dataset_name, "split": self.split,
                "fingerprint": self.fingerprint, "n_images": self.n_images, "n_rows": self.n_rows, "n_prefix": self.n_prefix,
                "patch_grid": list(self.patch_grid), "model_image_size": list(self.model_image_size),
                "hist_range": list(self.hist_range)}
        save_json_atomic(meta, folder / _META_FILE)
        return folder

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "LatentStatistics":
        """Read statistics written by `save`."""
        folder = Path(folder)
        if not (folder / _META_FILE).is_file() or not (folder / _TENSOR_FILE).is_file():
            raise DataError(f"{folder} holds no {_META_FILE} + {_TENSOR_FILE}; point at a folder written by LatentStatistics.save")
        meta = json.loads((folder / _META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{folder / _META_FILE} has format {meta.get('format_version')!r}, expected {FORMAT_VERSION}; "
                            "recompute the statistics with this version")
        tensors = load_file(str(folder / _TENSOR_FILE))
        return cls(meta["hook_name"], meta["tokens"], meta["class_names"], meta["dataset_name"], meta["split"],
                   meta["fingerprint"], meta["n_images"], meta["n_rows"], meta["n_prefix"], tuple(meta["patch_grid"]),
                   tuple(meta["model_image_size"]), tuple(meta["hist_range"]), **{name: tensors[name] for name in _TENSORS})


@dataclass
class SelectivityTable:
    """Class selectivity of the latents firing on at least ``min_firing`` images, most selective first.

    ``score`` is the class-balanced share of the latent's activation mass on ``top_class`` (chance
    ``1/n_classes``) with its delta-method standard error ``score_se``; ``precision`` is the fraction of
    the images it fires on that belong to ``top_class`` and ``precision_low`` its Wilson 95% lower
    bound; ``class_firing_rates[c]`` the fraction of class ``c``'s images it fires on.
    """

    class_names: list[str]
    min_firing: int
    d_sae: int
    n_dead: int
    split: str
    rows: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready table."""
        return {"class_names": self.class_names, "min_firing": self.min_firing, "d_sae": self.d_sae, "n_dead": self.n_dead,
                "split": self.split, "chance_score": 1 / len(self.class_names), "rows": self.rows}

    def to_markdown(self, max_rows: Optional[int] = None) -> str:
        """The first ``max_rows`` rows (all by default); per-class firing rates only up to 12 classes."""
        per_class = len(self.class_names) <= 12
        header = "| latent | top class | score | ± SE | firing rate | mean act. | precision | ≥ (95%) |"
        rule = "|---:|---|---:|---:|---:|---:|---:|---:|"
        if per_class:
            header += "".join(f" {name} |" for name in self.class_names)
            rule += "---:|" * len(self.class_names)
        lines = [f"Class selectivity ({self.split or 'unknown'} split): {len(self.rows)} of {self.d_sae} latents fire on "
                 f">= {self.min_firing} images, {self.n_dead} dead; chance score {1 / len(self.class_names):.3f}.", "",
                 header, rule]
        for row in self.rows[:max_rows]:
            line = (f"| {row['latent']} | {row['top_class']} | {row['score']:.3f} | {row['score_se']:.3f} | "
                    f"{row['firing_rate']:.2%} | {row['mean_activation']:.3g} | {row['precision']:.1%} | {row['precision_low']:.1%} |")
            if per_class:
                line += "".join(f" {rate:.1%} |" for rate in row["class_firing_rates"])
            lines.append(line)
        return "\n".join(lines)


class _Accumulator:
    """Running sums, histogram and top-k for `latent_statistics` (bounded by d_sae, not by images)."""

    def __init__(self, d_sae: int, n_classes: int, top_k: int, n_bins: int, hist_range: tuple[float, float],
                 device: torch.device) -> None:
        kw = {"device": device}
        self.class_counts = torch.zeros(n_classes, dtype=torch.int64, **kw)
        self.class_fire_counts = torch.zeros(n_classes, d_sae, dtype=torch.int64, **kw)
        self.class_act_sums = torch.zeros(n_classes, d_sae, dtype=torch.float64, **kw)
        self.class_act_sq_sums = torch.zeros(n_classes, d_sae, dtype=torch.float64, **kw)
        self.row_fire_counts = torch.zeros(d_sae, dtype=torch.int64, **kw)
        self.hist_counts = torch.zeros(d_sae * n_bins, dtype=torch.int64, **kw)
        self.top_values = torch.zeros(d_sae, 0, dtype=torch.float32, **kw)
        self.top_images = torch.zeros(d_sae, 0, dtype=torch.int64, **kw)
        self.top_positions = torch.zeros(d_sae, 0, dtype=torch.int64, **kw)
        self.top_k, self.n_bins = top_k, n_bins
        self.log_low = float(torch.log10(torch.tensor(hist_range[0], dtype=torch.float64)))
        self.log_high = float(torch.log10(torch.tensor(hist_range[1], dtype=torch.float64)))

    def add(self, values: Tensor, positions: Tensor, labels: Tensor, start: int) -> None:
        """Fold in one batch: ``values``/``positions`` ``[batch, d_sae]`` per-image activations and argmax positions."""
        values = values.float()
        fired = values > 0
        values64 = values.double()
        self.class_counts += torch.bincount(labels, minlength=len(self.class_counts))
        self.class_fire_counts.index_add_(0, labels, fired.long())
        self.class_act_sums.index_add_(0, labels, values64)
        self.class_act_sq_sums.index_add_(0, labels, values64**2)
        # Fixed log grid: a pass cannot know each latent's range in advance, and log bins cover
        # activations of any scale; only firing images are binned (zeros would swamp the plot).
        image, latent = torch.nonzero(fired, as_tuple=True)
        logs = torch.log10(values64[image, latent])
        bins = ((logs - self.log_low) / (self.log_high - self.log_low) * self.n_bins).floor().long().clamp(0, self.n_bins - 1)
        self.hist_counts += torch.bincount(latent * self.n_bins + bins, minlength=self.hist_counts.numel())
        # Merge the batch into the running top-k. A stable descending sort over [kept, batch] breaks
        # ties towards the earlier (lower-index) image, so the result does not depend on batch size.
        batch_index = torch.arange(start, start + len(values), device=values.device)
        merged_values = torch.cat([self.top_values, values.T], dim=1)
        merged_images = torch.cat([self.top_images, batch_index.expand(values.shape[1], -1)], dim=1)
        merged_positions = torch.cat([self.top_positions, positions.T], dim=1)
        order = torch.sort(merged_values, dim=1, descending=True, stable=True).indices[:, : self.top_k]
        self.top_values = merged_values.gather(1, order)
        self.top_images = merged_images.gather(1, order)
        self.top_positions = merged_positions.gather(1, order)


def _sae_width(sae: Any) -> tuple[int, int]:
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(cfg, "d_in") or not hasattr(cfg, "d_sae") or not hasattr(sae, "encode"):
        raise ConfigError(f"expected a sae-lens SAE (with .cfg.d_in, .cfg.d_sae and .encode), got {type(sae).__name__}")
    return int(cfg.d_in), int(cfg.d_sae)


@torch.no_grad()
def latent_statistics(
    model: Any,
    sae: Any,
    dataset: Any,
    hook_name: Optional[str] = None,
    tokens: Any = "cls",
    top_k: int = 16,
    batch_size: int = 256,
    n_bins: int = 160,
    hist_range: Sequence[float] = (1e-4, 1e4),
    progress: bool = True,
) -> LatentStatistics:
    """Statistics of every latent of ``sae`` over ``dataset`` in one streaming pass (see the module docstring).

    Args:
        model: The `HookedViT` the SAE reads; the forward pass stops at the hooked block.
        sae: A sae-lens SAE; hooks already on it (steering) stay active.
        dataset: A labelled `ImageDataset`. Pass the split explicitly: latents meant for steering must be
            selected on training data (`LatentStatistics.class_selective_latents` refuses ``test``).
        hook_name: Hook the SAE reads (default ``sae.cfg.metadata.hook_name``).
        tokens: ``cls``, ``patches`` or ``all``; for the last two an image's activation is its maximum
            over positions.
        top_k: Top activating images kept per latent.
        batch_size: Images per forward pass.
        n_bins: Histogram bins, log-spaced over ``hist_range`` (20 per decade by default).
        hist_range: ``(low, high)`` activation range of the histogram; values outside go to the end bins.
        progress: Show a progress bar.

    Returns:
        A `LatentStatistics` on CPU.
    """
    if not isinstance(model, HookedViT):
        raise ConfigError(f"expected a HookedViT, got {type(model).__name__}; load one with HookedViT.from_pretrained")
    d_in, d_sae = _sae_width(sae)
    dataset = check_labelled(dataset)
    tokens = check_tokens(tokens)
    if hook_name is None:
        hook_name = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
        if not hook_name:
            raise ConfigError("the SAE has no cfg.metadata.hook_name; pass hook_name='blocks.L.hook_resid_pre' (the hook it was trained on)")
    model.check_hook_name(hook_name)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1 or n_bins < 1 or batch_size < 1:
        raise ConfigError(f"top_k ({top_k!r}), n_bins ({n_bins}) and batch_size ({batch_size}) must be positive integers")
    low, high = (float(v) for v in hist_range)
    if not 0 < low < high:
        raise ConfigError(f"hist_range {tuple(hist_range)} must be 0 < low < high (the bins are log-spaced)")
    parameter = next(sae.parameters())
    labels = dataset.labels.to(parameter.device)
    acc = _Accumulator(d_sae, dataset.n_classes, top_k, n_bins, (low, high), parameter.device)
    start, n_rows, n_prefix = 0, 0, n_prefix_tokens(model)
    for rows in iter_activations(model, hook_name, dataset.images, tokens, batch_size, parameter.device, progress):
        if rows.shape[-1] != d_in:
            raise ConfigError(f"{hook_name} has width {rows.shape[-1]} but the SAE expects d_in={d_in}; use the SAE trained on this hook")
        n_batch = min(batch_size, len(dataset) - start)
        acts = sae.encode(rows.to(parameter.dtype)).abs()
        # One value per image: patch/all rows become [image, position, latent] and reduce by max.
        values, positions = acts.reshape(n_batch, -1, d_sae).max(dim=1)
        if tokens == "patches":
            positions = positions + n_prefix  # report positions in the hooked tensor, not among patches
        acc.row_fire_counts += (acts != 0).sum(0)
        acc.add(values, positions, labels[start: start + n_batch], start)
        start, n_rows = start + n_batch, n_rows + len(rows)
    cfg = model.cfg
    grid = (cfg.image_size[0] // cfg.patch_size[0], cfg.image_size[1] // cfg.patch_size[1])
    pad = top_k - acc.top_values.shape[1]  # fewer images than top_k: pad with "none" entries
    top_values = torch.nn.functional.pad(acc.top_values, (0, pad)).cpu()
    none = top_values == 0
    top_images = torch.nn.functional.pad(acc.top_images, (0, pad)).cpu().masked_fill(none, -1)
    top_positions = torch.nn.functional.pad(acc.top_positions, (0, pad)).cpu().masked_fill(none, -1)
    top_labels = dataset.labels[top_images.clamp(min=0)].masked_fill(none, -1)
    stats = LatentStatistics(
        hook_name, tokens, list(dataset.class_names), dataset.name, dataset.split, dataset_fingerprint(dataset),
        len(dataset), n_rows, n_prefix, grid, tuple(cfg.image_size), (low, high),
        acc.class_counts.cpu(), acc.class_fire_counts.cpu(), acc.class_act_sums.cpu(), acc.class_act_sq_sums.cpu(),
        acc.row_fire_counts.cpu(), acc.hist_counts.reshape(d_sae, n_bins).cpu(), top_values, top_images,
        top_positions, top_labels)
    logger.info("latent statistics of %s over %d %s images: %d of %d latents dead", hook_name, len(dataset),
                dataset.split or "?", len(stats.dead_latents), d_sae)
    return stats
