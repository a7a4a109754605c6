"""Head → class direct logit attribution (DLA) of one layer's attention heads, per class.

For each image, head ``h`` of layer ``l`` writes ``result_h = z_h W_O[h]`` into the residual stream
(what ``ActivationCache.stack_head_results`` stacks; computed here for layer ``l`` only). Its direct contribution to the logit of class ``c`` is what
the classifier reads of it: pooled like the model pools (CLS, mean, CLS + distillation), centred and
divided by the final LayerNorm's cached scale (``apply_ln_to_stack``), dotted with the class's
residual direction ``W_U[:, c] * ln_final.w`` (``ActivationCache.logit_attrs``, TransformerLens'
convention). "Direct" means through the residual stream straight to the classifier: what later
layers make of the head's output is not counted.

``head_dla[h, c]`` is the mean over the images of class ``c`` of head ``h``'s contribution to logit
``c`` (each image's own class). The layer's attention output is the heads plus the output bias
``b_O``, so ``head_dla.sum(0) + bias_dla == attn_out_dla``; everything else (embeddings, other layers,
MLPs, the classifier's constant) is ``other = logit - attn_out_dla``.

With a gate, the model runs gated (eval mode: deterministic decisions). A pruned head's ``z`` is
multiplied by 0 before ``W_O``, so it contributes exactly 0 on that image, and ``head_dla`` mixes
"pruned" (0) and "kept" images; ``keep_rate`` says how often each head ran per class and
`HeadClassDLA.head_dla_when_kept` is the mean over the images where it ran.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from jaxtyping import Float, Int64
from torch import Tensor
from transformer_lens.utilities import Slice

from vit_interp.attribution.checks import check_gate, check_model, class_index, selected_classes
from vit_interp.data import model_batches
from vit_interp.errors import ConfigError
from vit_interp.hooked_vit import HookedViT
from vit_interp.sae.latent_stats import check_labelled


@dataclass
class HeadClassDLA:
    """Direct logit attribution of the heads of ``layer`` to each class's own logit (module docstring).

    Columns follow ``classes`` (indices into the dataset's classes, names in ``class_names``).
    ``counts[c]`` images per class; ``logit[c]`` their mean logit of that class; ``keep_rate[h, c]``
    how often the gate kept head ``h`` (None without a gate on ``layer``).
    """

    layer: int
    class_names: list[str]
    classes: list[int]
    n_images: int
    dataset: str
    split: str
    gate_layers: Optional[list[int]]
    head_dla: Float[Tensor, "n_heads n_classes"] = field(repr=False)
    bias_dla: Float[Tensor, " n_classes"] = field(repr=False)
    attn_out_dla: Float[Tensor, " n_classes"] = field(repr=False)
    logit: Float[Tensor, " n_classes"] = field(repr=False)
    counts: Int64[Tensor, " n_classes"] = field(repr=False)
    keep_rate: Optional[Float[Tensor, "n_heads n_classes"]] = field(default=None, repr=False)

    @property
    def n_heads(self) -> int:
        """Heads of the layer."""
        return self.head_dla.shape[0]

    @property
    def head_labels(self) -> list[str]:
        """``L{layer}H{h}`` for every head."""
        return [f"L{self.layer}H{h}" for h in range(self.n_heads)]

    @property
    def other(self) -> Float[Tensor, " n_classes"]:
        """Everything that is not this layer's attention: ``logit - attn_out_dla`` (incl. the classifier's constant)."""
        return self.logit - self.attn_out_dla

    @property
    def head_dla_when_kept(self) -> Float[Tensor, "n_heads n_classes"]:
        """Mean contribution over the images where the head ran (pruned images contribute exactly 0)."""
        if self.keep_rate is None:
            return self.head_dla
        return self.head_dla / self.keep_rate

    def top_heads_for_class(self, class_: Any, n: Optional[int] = None) -> list[dict[str, Any]]:
        """Heads by decreasing contribution to ``class_`` (a name or index among the attributed classes)."""
        index = class_index(class_, self.class_names) if isinstance(class_, str) else self._column(class_)
        column = self.head_dla[:, index]
        order = torch.argsort(column, descending=True, stable=True)[: n or self.n_heads]
        rows = []
        for h in order.tolist():
            row = {"head": h, "label": self.head_labels[h], "dla": float(column[h])}
            if self.keep_rate is not None:
                row["keep_rate"] = float(self.keep_rate[h, index])
            rows.append(row)
        return rows

    def _column(self, class_: Any) -> int:
        if isinstance(class_, bool) or not isinstance(class_, int) or class_ not in self.classes:
            raise ConfigError(f"class {class_!r} was not attributed; attributed class indices: {self.classes}")
        return self.classes.index(class_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every matrix as nested lists keyed by class name."""
        out: dict[str, Any] = {"layer": self.layer, "dataset": self.dataset, "split": self.split, "n_images": self.n_images,
                               "gate_layers": self.gate_layers, "heads": self.head_labels, "classes": self.class_names,
                               "counts": self.counts.tolist(), "logit": self.logit.tolist(),
                               "head_dla": self.head_dla.tolist(), "bias_dla": self.bias_dla.tolist(),
                               "attn_out_dla": self.attn_out_dla.tolist(), "other": self.other.tolist()}
        if self.keep_rate is not None:
            out["keep_rate"] = self.keep_rate.tolist()
        return out

    def to_markdown(self) -> str:
        """One row per class: each head's DLA (with its keep rate under a gate), bias, layer total, logit."""
        keep = self.keep_rate is not None
        lines = ["| class | n | " + " | ".join(self.head_labels) + " | b_O | attn out | other | logit |",
                 "|---|---:|" + "---:|" * (self.n_heads + 4)]
        for i, name in enumerate(self.class_names):
            heads = " | ".join(f"{self.head_dla[h, i]:+.3f}" + (f" ({self.keep_rate[h, i]:.2f})" if keep else "")  # type: ignore[index]
                               for h in range(self.n_heads))
            lines.append(f"| {name} | {int(self.counts[i])} | {heads} | {self.bias_dla[i]:+.3f} | "
                         f"{self.attn_out_dla[i]:+.3f} | {self.other[i]:+.3f} | {self.logit[i]:+.3f} |")
        note = " Keep rates in parentheses; a pruned head contributes 0." if keep else ""
        return "\n".join(lines) + f"\n\nMean over each class's images of the contribution to that class's logit.{note}"

    def to_csv(self) -> str:
        """``class, n, <heads>, b_O, attn_out, other, logit`` (and ``keep_<head>`` columns under a gate)."""
        keep = self.keep_rate is not None
        header = ["class", "n", *self.head_labels, "b_O", "attn_out", "other", "logit"]
        header += [f"keep_{label}" for label in self.head_labels] if keep else []
        lines = [",".join(header)]
        for i, name in enumerate(self.class_names):
            values = [*self.head_dla[:, i].tolist(), float(self.bias_dla[i]), float(self.attn_out_dla[i]),
                      float(self.other[i]), float(self.logit[i])]
            values += self.keep_rate[:, i].tolist() if keep else []  # type: ignore[index]
            quoted = '"' + name.replace('"', '""') + '"' if "," in name or '"' in name else name
            lines.append(f"{quoted},{int(self.counts[i])}," + ",".join(f"{v:.8g}" for v in values))
        return "\n".join(lines) + "\n"

    def heatmap(self, title: Optional[str] = None, when_kept: bool = False) -> Any:
        """`vit_interp.attribution.head_class_heatmap` of this result."""
        from vit_interp.attribution.figures import head_class_heatmap

        return head_class_heatmap(self, title=title, when_kept=when_kept)


def component_logit_attrs(model: HookedViT, cache: Any, stack: Float[Tensor, "components batch pos d_model"],
                          classes: Tensor) -> Float[Tensor, "components batch"]:
    """Each component's direct contribution to each image's logit of ``classes[b]``, the model's way.

    ``stack`` holds residual-stream components at every position (e.g. ``stack_head_results``). They
    are pooled like the classifier pools and put through ``cache.logit_attrs`` (centring, the cached
    final LayerNorm scale, ``W_U * ln_final.w``); with a final norm applied to every token before mean
    pooling, the norm is applied per token (``apply_ln_to_stack``) and then pooled.
    """
    cfg = model.cfg
    if cfg.final_norm == "pre_pool" and cfg.pool == "mean":
        scaled = cache.apply_ln_to_stack(stack, layer=-1)
        return (model.pool_positions(scaled) * model.tokens_to_residual_directions(classes)).sum(-1)
    pooled = model.pool_positions(stack)
    if cfg.final_norm == "post_pool":
        attrs = cache.logit_attrs(pooled, tokens=classes)
    else:  # the norm's scale is cached per token: take the pooled token(s)
        attrs = cache.logit_attrs(pooled, tokens=classes, pos_slice=0 if cfg.pool == "cls" else Slice(slice(0, 2)))
    return attrs.sum(-1) if cfg.pool == "cls_dist" else attrs


def head_class_dla(
    model: Any,
    dataset: Any,
    layer: Any,
    gate: Any = None,
    classes: Any = None,
    batch_size: int = 128,
    progress: bool = True,
) -> HeadClassDLA:
    """Per (head of ``layer``, class) direct logit attribution over a labelled dataset (module docstring).

    Args:
        model: The `HookedViT` (put in eval mode).
        dataset: A labelled `ImageDataset` (images in [0, 1]).
        layer: The layer whose heads are attributed (negative counts from the end).
        gate: Optional `HeadGate`: the model runs gated (pruned heads contribute 0). A gate reading an
            SAE's hook needs that SAE spliced: run inside ``with model.saes([sae], use_error_term=True)``.
        classes: ``None``/``"all"`` or a list of class names/indices: the columns, and the images used.
        batch_size: Images per forward pass.
        progress: Show a progress bar.
    """
    model = check_model(model)
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
        raise ConfigError(f"layer {layer!r} is out of range for a model with {n_layers} layers; use 0..{n_layers - 1}")
    layer %= n_layers
    if gate is not None:
        gate = check_gate(gate, model)
        gate.check_compatible(model)
    dataset = check_labelled(dataset)
    selected = selected_classes("all" if classes is None else classes, dataset.class_names)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    slot_of_label = torch.full((dataset.n_classes,), -1, dtype=torch.long)
    slot_of_label[selected] = torch.arange(len(selected))
    keep_images = torch.nonzero(slot_of_label[dataset.labels] >= 0).flatten()
    data = dataset.subset(keep_images)
    if len(data) == 0:
        raise ConfigError(f"no images of classes {[dataset.class_names[c] for c in selected]} in the dataset")

    model.eval()
    n_heads, n_sel = model.cfg.n_heads, len(selected)
    device = model.embed.W_E.device
    names = [f"blocks.{layer}.attn.hook_z", "ln_final.hook_scale", f"blocks.{layer}.hook_attn_out"]
    W_O = model.blocks[layer].attn.W_O
    sums = torch.zeros(n_heads + 3, n_sel, dtype=torch.float64)  # heads, b_O, attn_out, logit
    keep = torch.zeros(n_heads, n_sel, dtype=torch.float64)
    gates_layer = gate is not None and layer in gate.layers
    gated = gate.attached(model) if gate is not None else contextlib.nullcontext()  # attached() never gates twice
    start = 0
    with torch.no_grad(), gated:
        for images in model_batches(data.images, model.cfg, device, batch_size, f"DLA layer {layer}", progress):
            labels = data.labels[start: start + len(images)].to(device)
            slot = slot_of_label[labels.cpu()]
            start += len(images)
            logits, cache = model.run_with_cache(images, names_filter=names)
            # Each head's result z_h W_O[h], as ActivationCache.compute_head_results computes it, for this
            # layer only: stack_head_results(layer + 1) would compute (and broadcast through a
            # [batch, pos, heads, d_head, d_model] product) every earlier layer too, ~5x slower here.
            heads = torch.einsum("bphe,hed->hbpd", cache[f"blocks.{layer}.attn.hook_z"], W_O)
            attn_out = cache[f"blocks.{layer}.hook_attn_out"][None]
            bias = model.blocks[layer].attn.b_O.expand_as(attn_out)
            attrs = component_logit_attrs(model, cache, torch.cat([heads, bias, attn_out]), labels)
            true_logit = logits.gather(1, labels[:, None]).T
            sums.index_add_(1, slot, torch.cat([attrs, true_logit]).double().cpu())
            if gates_layer:
                keep.index_add_(1, slot, gate.last_masks[layer].T.double().cpu())  # type: ignore[union-attr]
    counts = torch.bincount(slot_of_label[data.labels], minlength=n_sel)
    means = sums / counts.double()
    return HeadClassDLA(layer, [dataset.class_names[c] for c in selected], selected, len(data), dataset.name,
                        dataset.split, list(gate.layers) if gate is not None else None, means[:n_heads],
                        means[n_heads], means[n_heads + 1], means[n_heads + 2], counts,
                        keep / counts.double() if gates_layer else None)
