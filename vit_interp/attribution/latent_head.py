"""Latent → head attribution: which SAE latents push a gated layer's heads to be kept or pruned.

The setting is the paper's (DESIGN.md §2): an SAE sits at the hook a `HeadGate` reads for layer ``l``
(``blocks.{l}.hook_resid_pre``, or ``<that hook>.hook_sae_output``), on the token the gate reads
(CLS). Spliced with its error term, the gate sees ``x = x̂(a) + error = x`` exactly, and steering a
latent ``j`` by ``Δa_j`` moves the gate's input by ``Δa_j · d_j``, where ``d_j`` is the latent's
decoder direction (``decode(e_j) - decode(0)``: ``W_dec[j]``, divided by its norm for TopK SAEs that
rescale by decoder norm). Three attributions of latent ``j`` to head ``h`` of layer ``l`` follow:

* ``grad_x_act``: ``a_j · ∂logit_h/∂a_j = a_j · (d_j · ∇_x logit_h)``, the first-order effect of the
  latent on the gate's keep-logit. For AdaViT's linear decision network ``∇_x logit_h = W_gate[h]``, so
  this is ``a_j · (d_j · W_gate[h])`` with no backward pass at all (the tests check it against autograd
  through the spliced model). For a linear gate it sums over latents to ``logit_h - W_gate[h]·(b_dec + error) - b_h``.
* ``ablation``: the latent's effect on the keep probability ``sigmoid(logit_h)`` (target
  ``probability``) or on the hard keep decision ``logit_h > 0`` (target ``decision``): the value with
  the latent minus the value with ``a_j`` set to 0. The gate's input with ``a_j = 0`` is
  ``x - a_j d_j``, so every (image, firing latent) pair costs one decision-network row, never a forward
  pass of the backbone. (`latent_ablation_effect` re-runs the real spliced, gated model instead: the
  slow ground truth, for cross-checks.)
* ``correlation``: Pearson correlation over images between ``a_j`` and the gate's logit (or keep
  probability, or hard decision) for head ``h``.

**Sign convention.** For every method a positive value means "this latent pushes head ``h`` towards
being kept" (for ablation: removing the latent lowers the keep probability).

**Averages.** ``grad_x_act`` and ``ablation`` are means over *all* images (a latent contributes 0
where it does not fire), so they weigh how often a latent fires as well as how strongly it acts;
`LatentHeadAttribution.when_firing` rescales them to the mean over the images where it fires.
A latent that never fires on the dataset has a zero row for those two methods and a NaN row for
``correlation`` (no variance); so does a (latent, head) pair whose target never varies (e.g. a head
always kept, for target ``decision``). `LatentHeadAttribution.never_fired` lists those latents.

Every method is computed from one harvest of the SAE hook (`vit_interp.sae.iter_activations`: the
forward pass stops there, so nothing after it runs) with the gate's other layers active; the model is
put in eval mode (deterministic decisions). Hooks on the SAE's own hook points (e.g. steering) fire
inside ``sae.encode``: attribute an unsteered SAE.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from jaxtyping import Float, Int64
from torch import Tensor, nn

from vit_interp.attribution.checks import (
    check_gate,
    check_latent,
    check_model,
    check_sae,
    class_index,
    gate_token,
    resolve_layer,
    selected_classes,
)
from vit_interp.data import model_batches
from vit_interp.errors import ClassIndexError, ConfigError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT
from vit_interp.sae.harvest import iter_activations
from vit_interp.sae.latent_stats import check_labelled

logger = logging.getLogger(__name__)

METHODS = ("grad_x_act", "ablation", "correlation")
TARGETS = {"grad_x_act": ("logit",), "ablation": ("probability", "decision"),
           "correlation": ("logit", "probability", "decision")}
DEFAULT_TARGETS = {"grad_x_act": "logit", "ablation": "probability", "correlation": "logit"}


@dataclass
class LatentHeadAttribution:
    """Attribution of every latent of an SAE to every head of one gated layer (see the module docstring).

    ``matrix[j, h]`` is latent ``j``'s attribution to head ``h`` over all images; ``class_matrix[i, j, h]``
    the same over the images of class ``classes[i]`` (None unless classes were asked for; NaN for a
    class with no images).
    ``fire_counts[j]`` is the number of images on which latent ``j`` fires.
    """

    method: str
    target: str
    layer: int
    hook_name: str
    n_images: int
    class_names: list[str]
    classes: list[int]
    dataset: str
    split: str
    matrix: Float[Tensor, "d_sae n_heads"] = field(repr=False)
    fire_counts: Int64[Tensor, " d_sae"] = field(repr=False)
    class_matrix: Optional[Float[Tensor, "n_selected d_sae n_heads"]] = field(default=None, repr=False)
    class_counts: Optional[Int64[Tensor, " n_selected"]] = field(default=None, repr=False)
    class_fire_counts: Optional[Int64[Tensor, "n_selected d_sae"]] = field(default=None, repr=False)

    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.matrix.shape[0]

    @property
    def n_heads(self) -> int:
        """Heads of the gated layer."""
        return self.matrix.shape[1]

    @property
    def head_labels(self) -> list[str]:
        """``L{layer}H{h}`` for every head (TransformerLens' labels)."""
        return [f"L{self.layer}H{h}" for h in range(self.n_heads)]

    @property
    def never_fired(self) -> Int64[Tensor, " n_dead"]:
        """Latents that fire on no image: zero rows (grad×act, ablation) or NaN rows (correlation)."""
        return torch.nonzero(self.fire_counts == 0).flatten()

    @property
    def when_firing(self) -> Float[Tensor, "d_sae n_heads"]:
        """``matrix`` as a mean over the images where each latent fires (NaN rows for latents that never fire).

        Only meaningful for the averaged methods (grad×act, ablation): a correlation is not an average.
        """
        if self.method == "correlation":
            raise ConfigError("when_firing rescales an average over images; a correlation is not one: use matrix")
        return self.matrix * self.n_images / self.fire_counts.double()[:, None]

    @property
    def description(self) -> str:
        """What one value of the matrix is, in words (for axis labels and reports)."""
        return {("grad_x_act", "logit"): "grad×act on the gate logit (mean over images)",
                ("ablation", "probability"): "keep probability with − without the latent (mean over images)",
                ("ablation", "decision"): "keep rate with − without the latent (mean over images)",
                ("correlation", "logit"): "Pearson r of activation and gate logit",
                ("correlation", "probability"): "Pearson r of activation and keep probability",
                ("correlation", "decision"): "Pearson r of activation and keep decision"}[(self.method, self.target)]

    def check_latent(self, latent: Any) -> int:
        """``latent`` as an int in ``[0, d_sae)``, or a one-line `LatentIndexError`."""
        return check_latent(latent, self.d_sae)

    def values(self, class_: Any = None) -> Float[Tensor, "d_sae n_heads"]:
        """The matrix over all images (``class_=None``) or over one of the attributed classes."""
        if class_ is None:
            return self.matrix
        if self.class_matrix is None:
            raise ConfigError("no per-class matrices: compute them with classes='all' (or a list of classes)")
        index = class_index(class_, self.class_names)
        if index not in self.classes:
            raise ClassIndexError(f"class {self.class_names[index]!r} was not attributed; attributed: "
                                  f"{[self.class_names[c] for c in self.classes]}")
        return self.class_matrix[self.classes.index(index)]

    def top_latents_for_head(self, head: Any, n: int = 10, sign: Optional[str] = None, class_: Any = None
                             ) -> list[dict[str, Any]]:
        """The ``n`` latents with the largest attribution to ``head``, strongest first.

        Args:
            head: Head index in the gated layer.
            n: How many latents (fewer if fewer fired or have a finite value).
            sign: ``None``: by ``|value|``; ``"positive"``: the latents that most push the head *on*
                (largest positive values); ``"negative"``: those that most push it *off*.
            class_: Rank within one attributed class (name or index) instead of over all images.

        Returns:
            Dicts with ``latent``, ``value`` and ``fire_count``; latents that never fired are left out.
        """
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.n_heads:
            raise ConfigError(f"head {head!r} is out of range; layer {self.layer} has heads 0..{self.n_heads - 1}")
        if sign not in (None, "positive", "negative"):
            raise ConfigError(f"sign must be None, 'positive' or 'negative', got {sign!r}")
        column = self.values(class_)[:, head]
        key = {None: column.abs(), "positive": column, "negative": -column}[sign]
        usable = torch.isfinite(column) & (self.fire_counts > 0)
        if sign is not None:
            usable &= key > 0
        candidates = torch.nonzero(usable).flatten()
        order = candidates[torch.argsort(key[candidates], descending=True, stable=True)][:n]
        return [{"latent": int(j), "value": float(column[j]), "fire_count": int(self.fire_counts[j])} for j in order]

    def top_latents(self, n: int = 20) -> list[int]:
        """The ``n`` fired latents with the largest ``|value|`` on any head, strongest first."""
        strength = self.matrix.abs().nan_to_num(-1.0).amax(dim=1)
        fired = torch.nonzero((self.fire_counts > 0) & (strength >= 0)).flatten()
        return fired[torch.argsort(strength[fired], descending=True, stable=True)][:n].tolist()

    def to_dict(self, top: int = 10) -> dict[str, Any]:
        """JSON-ready summary: settings, never-fired latents and each head's top ``top`` latents each way.

        The full matrices are in `to_csv`.
        """
        heads = {}
        for h, label in enumerate(self.head_labels):
            heads[label] = {"on": self.top_latents_for_head(h, top, "positive"),
                            "off": self.top_latents_for_head(h, top, "negative")}
        out = {"method": self.method, "target": self.target, "description": self.description, "layer": self.layer,
               "hook_name": self.hook_name, "dataset": self.dataset, "split": self.split, "n_images": self.n_images,
               "d_sae": self.d_sae, "n_never_fired": len(self.never_fired), "never_fired": self.never_fired.tolist(),
               "heads": heads}
        if self.class_matrix is not None:
            out["classes"] = [self.class_names[c] for c in self.classes]
        return out

    def to_markdown(self, top: int = 5) -> str:
        """Per head: the ``top`` latents that most push it on and off."""
        lines = [f"**{self.method}** ({self.description}) on {self.n_images} {self.split or ''} images; "
                 f"{len(self.never_fired)} of {self.d_sae} latents never fired.", "",
                 "| head | pushes on (latent: value) | pushes off (latent: value) |", "|---|---|---|"]
        for h, label in enumerate(self.head_labels):
            on = ", ".join(f"{r['latent']}: {r['value']:+.3g}" for r in self.top_latents_for_head(h, top, "positive"))
            off = ", ".join(f"{r['latent']}: {r['value']:+.3g}" for r in self.top_latents_for_head(h, top, "negative"))
            lines.append(f"| {label} | {on or '–'} | {off or '–'} |")
        return "\n".join(lines)

    def to_csv(self, class_: Any = None) -> str:
        """The full ``[d_sae, n_heads]`` matrix (all images, or one attributed class) as CSV, one row per latent."""
        matrix, fires = self.values(class_), self.fire_counts
        if class_ is not None:
            fires = self.class_fire_counts[self.classes.index(class_index(class_, self.class_names))]  # type: ignore[index]
        lines = ["latent,fire_count," + ",".join(self.head_labels)]
        for j, (row, count) in enumerate(zip(matrix.tolist(), fires.tolist())):
            lines.append(f"{j},{count}," + ",".join(f"{v:.8g}" for v in row))
        return "\n".join(lines) + "\n"

    def heatmap(self, n: int = 20, latents: Optional[Sequence[int]] = None, stats: Any = None,
                class_: Any = None, title: Optional[str] = None) -> Any:
        """`vit_interp.attribution.latent_head_heatmap` of this result."""
        from vit_interp.attribution.figures import latent_head_heatmap

        return latent_head_heatmap(self, n=n, latents=latents, stats=stats, class_=class_, title=title)


def _splice(model: HookedViT, sae: Any, tokens: str) -> Any:
    """Splice ``sae`` with its error term (the clean stream, exactly) so gate reads of ``<hook>.hook_sae_output`` resolve."""
    return model.saes([sae], use_error_term=True, tokens=tokens)


def _other_layers_gated(model: HookedViT, gate: HeadGate, layer: int) -> Any:
    """The gate's other layers active during the harvest (a no-op if the gate is attached already)."""
    if gate.is_attached(model):
        return contextlib.nullcontext()
    own = {gate.read_hooks[layer], f"blocks.{layer}.attn.hook_head_mask"}
    pairs = [(name, fn) for name, fn in gate.fwd_hooks() if name not in own]
    return model.hooks(fwd_hooks=pairs)


@torch.no_grad()
def decoder_directions(sae: Any) -> Float[Tensor, "d_sae d_in"]:
    """Each latent's direction in the hooked space: ``decode(e_j) - decode(0)`` (exact for an affine decoder)."""
    d_sae = int(sae.cfg.d_sae)
    param = sae.W_dec
    base = sae.decode(torch.zeros(1, d_sae, dtype=param.dtype, device=param.device))
    rows = []
    for start in range(0, d_sae, 512):
        eye = torch.zeros(min(512, d_sae - start), d_sae, dtype=param.dtype, device=param.device)
        eye[:, start: start + len(eye)] = torch.eye(len(eye), dtype=param.dtype, device=param.device)
        rows.append(sae.decode(eye) - base)
    return torch.cat(rows).reshape(d_sae, -1)


def _target(logits: Tensor, target: str) -> Tensor:
    if target == "logit":
        return logits
    return torch.sigmoid(logits) if target == "probability" else (logits > 0).to(logits.dtype)


class _Means:
    """Sums of per-(image, latent) values into ``[d_sae, H]`` totals and per-selected-class totals."""

    def __init__(self, d_sae: int, n_heads: int, n_selected: int, device: torch.device) -> None:
        self.total = torch.zeros(d_sae, n_heads, dtype=torch.float64, device=device)
        self.by_class = torch.zeros(n_selected * d_sae, n_heads, dtype=torch.float64, device=device)
        self.d_sae = d_sae

    def add(self, latent: Tensor, slot: Tensor, values: Tensor) -> None:
        values = values.double()
        self.total.index_add_(0, latent, values)
        mine = slot >= 0
        if mine.any():
            self.by_class.index_add_(0, slot[mine] * self.d_sae + latent[mine], values[mine])


class _Pearson:
    """Streaming Pearson correlation of every latent with every head's target, overall and per class."""

    def __init__(self, d_sae: int, n_heads: int, n_selected: int, device: torch.device) -> None:
        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=device)

        groups = 1 + n_selected  # group 0: all images; group 1 + i: class i
        self.n, self.a, self.aa = zeros(groups), zeros(groups, d_sae), zeros(groups, d_sae)
        self.t, self.tt, self.at = zeros(groups, n_heads), zeros(groups, n_heads), zeros(groups, d_sae, n_heads)
        self.shift: Optional[Tensor] = None

    def add(self, acts: Tensor, target: Tensor, slot: Tensor) -> None:
        acts, target = acts.double(), target.double()
        if self.shift is None:  # centring by a first estimate keeps the sums of squares well conditioned
            self.shift = target.mean(0)
        target = target - self.shift
        self._add(0, acts, target)
        for s in slot.unique().tolist():
            if s >= 0:
                mine = slot == s
                self._add(1 + s, acts[mine], target[mine])

    def _add(self, g: int, acts: Tensor, target: Tensor) -> None:
        self.n[g] += len(acts)
        self.a[g] += acts.sum(0)
        self.aa[g] += (acts**2).sum(0)
        self.t[g] += target.sum(0)
        self.tt[g] += (target**2).sum(0)
        self.at[g] += acts.T @ target

    def result(self) -> Tensor:
        """``[groups, d_sae, H]`` correlations; NaN where either side has no variance."""
        n = self.n[:, None]
        mean_a, mean_t = self.a / n, self.t / n
        var_a = (self.aa / n - mean_a**2).clamp(min=0)
        var_t = (self.tt / n - mean_t**2).clamp(min=0)
        cov = self.at / n[:, :, None] - mean_a[:, :, None] * mean_t[:, None, :]
        denominator = (var_a[:, :, None] * var_t[:, None, :]).sqrt()
        # Zero variance (a latent that never fires, a head that never changes) has no correlation.
        tiny = 1e-12 * (self.aa / n).amax(dim=1, keepdim=True)[:, :, None].clamp(min=1e-30)
        return torch.where((var_a[:, :, None] > tiny) & (var_t[:, None, :] > 0), cov / denominator, torch.nan)


def latent_head_attributions(
    model: Any,
    sae: Any,
    gate: Any,
    dataset: Any,
    methods: Any = METHODS,
    layer: Any = None,
    targets: Optional[Mapping[str, str]] = None,
    batch_size: int = 256,
    classes: Any = None,
    progress: bool = True,
) -> dict[str, LatentHeadAttribution]:
    """Several latent → head attributions from one harvest of the SAE hook (see the module docstring).

    Args:
        model: The `HookedViT`; put in eval mode.
        sae: A sae-lens SAE whose ``cfg.metadata.hook_name`` is the hook the gate reads for ``layer``.
        gate: The `HeadGate`; its other layers stay active while harvesting.
        dataset: A labelled `ImageDataset` (images in [0, 1]).
        methods: Any of ``grad_x_act``, ``ablation``, ``correlation``.
        layer: The gated layer (default: the gate's only layer).
        targets: Per method, what is attributed: ``grad_x_act``: ``logit``; ``ablation``:
            ``probability`` (default) or ``decision``; ``correlation``: ``logit`` (default),
            ``probability`` or ``decision``.
        batch_size: Images per forward pass.
        classes: ``None`` (all images only), ``"all"`` or a list of class names/indices: also compute
            ``class_matrix`` over the images of each of those classes.
        progress: Show a progress bar.

    Returns:
        ``{method: LatentHeadAttribution}``.
    """
    model = check_model(model)
    gate = check_gate(gate, model)
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"methods {methods} must be distinct names among {list(METHODS)}")
    chosen = {m: (targets or {}).get(m, DEFAULT_TARGETS[m]) for m in methods}
    for method, target in chosen.items():
        if target not in TARGETS[method]:
            raise ConfigError(f"target {target!r} does not apply to {method}; choose one of {list(TARGETS[method])}")
    extra = set(targets or {}) - set(methods)
    if extra:
        raise ConfigError(f"targets given for methods not computed: {sorted(extra)}")
    layer = resolve_layer(gate, layer)
    hook_name = check_sae(sae, model, gate, layer)
    dataset = check_labelled(dataset)
    selected = selected_classes(classes, dataset.class_names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")

    model.eval()
    token, tokens = gate_token(model, gate)
    net = gate.decision[str(layer)]
    device = sae.W_dec.device
    d_sae, n_heads = int(sae.cfg.d_sae), gate.n_heads
    directions = decoder_directions(sae)
    linear = isinstance(net, nn.Linear)
    if linear:  # ∂logit/∂a_j = d_j · W[h]: one [d_sae, H] matrix for every image
        head_grad = directions.double() @ net.weight.detach().double().to(device).T
    slot_of_label = torch.full((dataset.n_classes,), -1, dtype=torch.long, device=device)
    slot_of_label[selected] = torch.arange(len(selected), device=device)
    labels = dataset.labels.to(device)
    means = {m: _Means(d_sae, n_heads, len(selected), device) for m in methods if m != "correlation"}
    pearson = _Pearson(d_sae, n_heads, len(selected), device) if "correlation" in methods else None
    fire_counts = torch.zeros(1 + len(selected), d_sae, dtype=torch.long, device=device)
    start = 0
    with _splice(model, sae, tokens), _other_layers_gated(model, gate, layer):
        for rows in iter_activations(model, hook_name, dataset.images, tokens, batch_size, device, progress):
            x = rows if tokens == "cls" else rows.reshape(-1, model.cfg.n_ctx, rows.shape[-1])[:, token]
            x = x.to(sae.W_dec.dtype)
            slot = slot_of_label[labels[start: start + len(x)]]
            start += len(x)
            with torch.no_grad():
                acts = sae.encode(x)
                logits = net(x)
            image, latent = torch.nonzero(acts, as_tuple=True)
            value = acts[image, latent]
            fire_counts[0] += (acts != 0).sum(0)
            for s in slot.unique().tolist():
                if s >= 0:
                    fire_counts[1 + s] += (acts[slot == s] != 0).sum(0)
            if "grad_x_act" in means:
                if linear:
                    gxa = value.double()[:, None] * head_grad[latent]
                else:
                    jacobian = _jacobian(net, x)  # [b, H, d]
                    gxa = value.double()[:, None] * torch.einsum("ed,ehd->eh", directions[latent].double(),
                                                                 jacobian[image].double())
                means["grad_x_act"].add(latent, slot[image], gxa)
            if "ablation" in means:
                with torch.no_grad():
                    ablated = net(x[image] - value[:, None] * directions[latent])
                target = chosen["ablation"]
                means["ablation"].add(latent, slot[image], _target(logits[image], target) - _target(ablated, target))
            if pearson is not None:
                pearson.add(acts, _target(logits, chosen["correlation"]), slot)
    n_images = start
    counts = torch.bincount(labels, minlength=dataset.n_classes)[selected].cpu()
    results = {}
    for method in methods:
        if method == "correlation":
            groups = pearson.result().cpu()  # type: ignore[union-attr]
            matrix, by_class = groups[0], groups[1:]
        else:
            matrix = means[method].total.cpu() / n_images
            by_class = means[method].by_class.cpu().reshape(len(selected), d_sae, n_heads) / counts.double()[:, None, None]
        results[method] = LatentHeadAttribution(
            method, chosen[method], layer, hook_name, n_images, list(dataset.class_names), selected, dataset.name,
            dataset.split, matrix, fire_counts[0].cpu(), by_class if selected else None, counts if selected else None,
            fire_counts[1:].cpu() if selected else None)
    dead = int((fire_counts[0] == 0).sum())
    logger.info("latent→head attribution (%s) of layer %d over %d images: %d of %d latents never fired",
                ", ".join(methods), layer, n_images, dead, d_sae)
    return results


def _jacobian(net: nn.Module, x: Tensor) -> Tensor:
    """Per-row Jacobian ``[b, H, d]`` of a non-linear decision network (a linear one needs none)."""
    from torch.func import jacrev, vmap

    with torch.enable_grad():
        return vmap(jacrev(lambda row: net(row[None])[0]))(x.detach())


def latent_head_attribution(
    model: Any,
    sae: Any,
    gate: Any,
    dataset: Any,
    method: Any = "grad_x_act",
    layer: Any = None,
    target: Any = None,
    batch_size: int = 256,
    classes: Any = None,
    progress: bool = True,
) -> LatentHeadAttribution:
    """One latent → head attribution (``grad_x_act``, ``ablation`` or ``correlation``); see `latent_head_attributions`."""
    if method not in METHODS:
        raise ConfigError(f"unknown attribution method {method!r}; choose one of {list(METHODS)}")
    targets = None if target is None else {method: target}
    return latent_head_attributions(model, sae, gate, dataset, [method], layer, targets, batch_size, classes,
                                    progress)[method]


def latent_ablation_effect(
    model: Any,
    sae: Any,
    gate: Any,
    dataset: Any,
    latents: Any,
    layer: Any = None,
    target: Any = "probability",
    batch_size: int = 256,
    progress: bool = True,
) -> Float[Tensor, "n_latents n_heads"]:
    """The ablation attribution measured the slow way: re-run the spliced, gated model per latent.

    The SAE is spliced with its error term at its hook (the clean model, exactly); for each latent a hook
    on ``<hook>.hook_sae_acts_post`` zeroes it at the gate's token and the model runs up to the gated
    block. Returns the mean over images of (target with the latent) − (target without it), target
    ``probability`` (keep probability) or ``decision`` (hard keep decision): the quantity that
    ``latent_head_attribution(..., method="ablation")`` computes without re-running the backbone.
    """
    model = check_model(model)
    gate = check_gate(gate, model)
    layer = resolve_layer(gate, layer)
    hook_name = check_sae(sae, model, gate, layer)
    dataset = check_labelled(dataset)
    if target not in TARGETS["ablation"]:
        raise ConfigError(f"target {target!r} does not apply to ablation; choose one of {list(TARGETS['ablation'])}")
    items = [latents] if isinstance(latents, (int, np.integer, Tensor)) and np.ndim(latents) == 0 else list(latents)
    chosen = [check_latent(j, int(sae.cfg.d_sae)) for j in items]
    model.eval()
    token, tokens = gate_token(model, gate)
    effects = torch.zeros(len(chosen), gate.n_heads, dtype=torch.float64)
    gated = gate.attached(model)  # a no-op context if the gate is attached already
    device = model.embed.W_E.device
    with torch.no_grad(), _splice(model, sae, tokens), gated:
        for images in model_batches(dataset.images, model.cfg, device, batch_size, "latent ablation", progress):
            model(images, stop_at_layer=layer + 1)
            clean = _target(gate.last_logits[layer], target).double().cpu()
            for i, j in enumerate(chosen):
                def zero(acts: Tensor, hook: Any, j: int = j) -> Tensor:
                    acts = acts.clone()
                    acts[:, token, j] = 0
                    return acts

                model.run_with_hooks(images, fwd_hooks=[(f"{hook_name}.hook_sae_acts_post", zero)],
                                     stop_at_layer=layer + 1)
                effects[i] += (clean - _target(gate.last_logits[layer], target).double().cpu()).sum(0)
    return effects / len(dataset)
