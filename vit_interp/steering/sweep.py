"""Evaluate many steering configurations at once, reusing everything steering cannot change.

Steering rewrites SAE latents at the gate's input, so everything before that hook is fixed: the
residual stream entering the gated block is computed once. With target ``gate`` the stream itself
is never changed either — only the gate's decisions are — so the gated block's output depends only
on (image, mask): the logits of every image under every one of the ``2^n_heads`` masks are computed
once, and a configuration then costs one SAE decode, one decision network and a table lookup. With
``gate+stream`` the steered class-token vector enters the stream and the gated block is rerun.

Each configuration gives what `vit_interp.steering.steer` gives on the same images (tested at 1e-5).
The engine needs the paper's wiring: one gated layer ``l`` whose gate reads the class token of
``blocks.{l}.hook_resid_pre``, where the SAE sits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.data import ImageDataset
from vit_interp.errors import ClassIndexError, ConfigError, DataError
from vit_interp.gating.baselines import all_subsets, fixed_mask_hook
from vit_interp.gating.gumbel import keep_decisions
from vit_interp.gating.head_gate import HeadGate, mask_hook_name
from vit_interp.gating.training import residual_at
from vit_interp.hooked_vit import HookedViT
from vit_interp.steering.spec import SteeringSpec
from vit_interp.steering.wiring import check_wiring, gate_layers_reading

MAX_TABLE_HEADS = 10  # 2^10 masks: beyond that the logits table is not worth building


@dataclass
class SweepResult:
    """What one configuration does to every image of the engine's dataset."""

    spec: Optional[SteeringSpec]
    masks: Float[Tensor, "n n_heads"]
    logits: Float[Tensor, "n n_classes"]
    labels: Tensor

    @property
    def correct(self) -> Tensor:
        """Per-image correctness (bool)."""
        return self.logits.argmax(-1) == self.labels

    @property
    def usage(self) -> Tensor:
        """Per-image fraction of the gated layer's heads kept."""
        return self.masks.float().mean(-1)


class SweepEngine:
    """Cached state for sweeping steering configurations over one dataset (see the module docstring).

    Args:
        model, gate, sae: The paper's system (`vit_interp.steering.steer` wiring).
        data: The images every configuration is evaluated on.
        batch_size: Images per forward pass while building the caches.
        progress: Progress bars while building.
    """

    @torch.no_grad()
    def __init__(self, model: HookedViT, gate: HeadGate, sae: Any, data: ImageDataset, batch_size: int = 512,
                 progress: bool = True):
        hook_name = check_wiring(model, gate, sae)
        layers = gate_layers_reading(gate, hook_name)
        if len(gate.layers) != 1 or hook_name != f"blocks.{layers[0]}.hook_resid_pre":
            raise ConfigError(f"the sweep engine needs one gated layer l reading blocks.l.hook_resid_pre where the SAE sits "
                              f"(gate layers {gate.layers}, SAE at {hook_name!r}); run other wirings with steer()")
        self.model, self.gate, self.sae, self.data = model, gate, sae, data
        self.layer, self.batch_size = layers[0], batch_size
        model.eval()
        self.prefix = residual_at(model, data, self.layer, batch_size, progress)  # [n, pos, d_model]
        x = self.prefix[:, 0]
        device = sae.W_dec.device
        self.acts = sae.encode(x.to(device))
        self.recon = sae.decode(self.acts)
        self.error = x.to(device) - self.recon
        self.n_heads = model.cfg.n_heads
        self.table: Optional[Tensor] = None  # [n_masks, n, n_classes]: logits under every mask (`subsets`)
        self.subsets: Optional[Tensor] = None
        if self.n_heads <= MAX_TABLE_HEADS:
            self.subsets = all_subsets(self.n_heads)
            self._code_to_row = torch.empty(2**self.n_heads, dtype=torch.long)
            self._code_to_row[self._codes(self.subsets)] = torch.arange(len(self.subsets))
            rows = []
            skipping = model.blocks[self.layer].attn.skip_pruned_heads
            model.set_skip_pruned_heads(True)  # one mask per pass: pruned heads are simply not computed
            try:
                for mask in tqdm(self.subsets, desc="logits under every mask", disable=not progress, leave=False):
                    hooks = [(mask_hook_name(self.layer), fixed_mask_hook(mask.to(self.prefix.device)))]
                    rows.append(self._suffix(self.prefix, hooks))
            finally:
                model.set_skip_pruned_heads(skipping)
            self.table = torch.stack(rows)  # [n_masks, n, n_classes]

    def class_rows(self, class_: Any) -> Tensor:
        """Bool ``[n]``: the engine's images of ``class_`` (a name or index); errors if it has none."""
        names = list(self.data.class_names)
        if isinstance(class_, str):
            if class_ not in names:
                raise ClassIndexError(f"unknown class {class_!r}; choose one of {names}")
            index = names.index(class_)
        elif isinstance(class_, bool) or not isinstance(class_, int) or not 0 <= class_ < len(names):
            raise ClassIndexError(f"class {class_!r} is out of range; use 0..{len(names) - 1} or a class name")
        else:
            index = class_
        rows = self.data.labels == index
        if not rows.any():
            raise DataError(f"class {names[index]!r} has no images in this {self.data.split} data; steer a class that is present")
        return rows

    def logits_under(self, masks: Tensor) -> Float[Tensor, "n n_classes"]:
        """Logits of every image under the given 0/1 mask (one row per image), from the table."""
        if self.table is None:
            raise ConfigError(f"no logits table for {self.n_heads} heads (built up to {MAX_TABLE_HEADS})")
        return self.table[self._code_to_row[self._codes(masks)], torch.arange(len(masks))]

    def _codes(self, masks: Tensor) -> Tensor:
        weights = 2 ** torch.arange(masks.shape[-1])
        return (masks.round().long().cpu() * weights).sum(-1)

    def _suffix(self, prefix: Tensor, hooks: list) -> Tensor:
        out = []
        with self.model.hooks(fwd_hooks=hooks):
            for start in range(0, len(prefix), self.batch_size):
                out.append(self.model(prefix[start: start + self.batch_size], start_at_layer=self.layer).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def run(self, spec: Optional[SteeringSpec] = None, rows: Optional[Tensor] = None) -> SweepResult:
        """Evaluate one configuration (``spec`` applied to the images where ``rows`` is True; None: all)."""
        if spec is not None:
            spec.check(self.sae.cfg.d_sae)
        if rows is not None and (rows.shape != (len(self.data),) or rows.dtype != torch.bool):
            raise ConfigError(f"rows must be a bool tensor with one flag per image ({len(self.data)}), got "
                              f"{rows.dtype} {tuple(rows.shape)}")
        x = self.prefix[:, 0].to(self.acts.device)
        if spec is None:
            seen = x
        else:
            recon = self.sae.decode(spec.apply(self.acts, rows))
            # As the spliced SAE does: elements the steering left unchanged stay exactly x.
            seen = torch.where(recon == self.recon, x, recon + self.error)
        decision = self.gate.decision[str(self.layer)]
        masks = keep_decisions(decision(seen.to(decision.weight.device))).cpu()
        if (spec is None or spec.target == "gate") and self.table is not None:
            logits = self.logits_under(masks)
        else:
            prefix = self.prefix.clone()
            prefix[:, 0] = seen.to(prefix.device) if spec is not None and spec.target == "gate+stream" else prefix[:, 0]
            mask_device = masks.to(prefix.device)
            logits = torch.cat([
                self._suffix(prefix[s: s + self.batch_size],
                             [(mask_hook_name(self.layer), fixed_mask_hook(mask_device[s: s + self.batch_size]))])
                for s in range(0, len(prefix), self.batch_size)])
        return SweepResult(spec, masks, logits, self.data.labels)



@torch.no_grad()
def latent_sweep(engine: SweepEngine, latents: Any, values: Any, rows: Optional[Tensor] = None, mode: str = "scale",
                 target: str = "gate") -> list[dict[str, Any]]:
    """The per-latent strategy: every latent alone at every value, on the images where ``rows`` is True
    (default: all; also where it is evaluated). One dict per (latent, value): ``latent``, ``value``,
    ``accuracy``, ``usage``, and the change of each against no steering."""
    evaluated = torch.ones(len(engine.data), dtype=torch.bool) if rows is None else rows
    base = engine.run(None)
    base_accuracy = float(base.correct[evaluated].double().mean())
    base_usage = float(base.usage[evaluated].mean())
    out = []
    for latent in latents:
        for value in values:
            result = engine.run(SteeringSpec([int(latent)], mode, float(value), target), rows=rows)
            accuracy, usage = float(result.correct[evaluated].double().mean()), float(result.usage[evaluated].mean())
            out.append({"latent": int(latent), "value": float(value), "accuracy": accuracy, "usage": usage,
                        "delta_accuracy": accuracy - base_accuracy, "delta_usage": usage - base_usage})
    return out
