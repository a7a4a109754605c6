"""`HookedViT`: a Vision Transformer classifier whose every activation is a TransformerLens hook point."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens import ActivationCache, FactoredMatrix, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import Slice

from vit_interp.components import Classifier, Embed, LayerNorm, PosEmbed, TransformerBlock
from vit_interp.components.spliced_sae import SAEHostMixin
from vit_interp.config import ViTConfig
from vit_interp.errors import (
    ClassIndexError,
    ImageDtypeError,
    ImageInputError,
    UnknownHookError,
)

ClassesLike = Union[int, str, Sequence[Union[int, str]], Tensor]
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]

# Per-head hooks: their position axis is third from last ([batch, pos, n_heads, d]).
_HEAD_POS_SUFFIXES = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")


class HookedViT(SAEHostMixin, HookedRootModule):
    """A pre-LN ViT classifier built from `vit_interp.components`, hookable like TransformerLens.

    ``run_with_hooks``, ``run_with_cache`` (returning a TransformerLens ``ActivationCache``),
    ``hooks()``, permanent and backward hooks all come from TransformerLens' ``HookedRootModule``.
    Hook names and shapes are listed in ``docs/hooks.md``; every hook in ``hook_dict`` fires on
    every full forward pass, and an edit made by a hook always reaches the output. sae-lens SAEs
    splice in like in sae-lens' ``HookedSAETransformer`` (``add_sae``, ``saes()``, ``run_with_saes``,
    ...: see `vit_interp.components.spliced_sae`).

    Example:
        >>> model = HookedViT(ViTConfig(n_layers=2, d_model=32, n_heads=4, image_size=16,
        ...                             patch_size=4, n_classes=10))
        >>> logits, cache = model.run_with_cache(torch.randn(2, 3, 16, 16))
        >>> cache["blocks.1.attn.hook_pattern"].shape
        torch.Size([2, 4, 17, 17])
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        self.pos_embed = PosEmbed(cfg)
        self.hook_pos_embed = HookPoint()
        # CLIP-style pre-norm: its output *is* the residual stream, so it can never be folded.
        self.ln_pre = LayerNorm(cfg.d_model, cfg.eps, "LN", cfg.dtype, cfg.device) if cfg.ln_pre else None
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        self.ln_final = LayerNorm(cfg.d_model, cfg.eps, cfg.normalization_type, cfg.dtype, cfg.device)
        self.hook_pooled = HookPoint()
        self.classifier = Classifier(cfg)
        self.hook_logits = HookPoint()
        self.init_weights()
        self.cfg.device = str(self.embed.W_E.device)
        self.setup()

    # Construction -------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """timm-style initialisation: truncated normal (std 0.02) weights, zero biases, unit LN.

        With ``cfg.seed`` set, a private generator is used (the global RNG is untouched and the same
        seed gives the same weights); otherwise torch's global RNG (``torch.manual_seed``) is.
        """
        generator = torch.Generator().manual_seed(self.cfg.seed) if self.cfg.seed is not None else None
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "b" or leaf.startswith("b_"):
                param.zero_()
            elif leaf == "w":
                param.fill_(1.0)
            else:
                values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
                param.copy_((values * 0.02).clamp_(-0.04, 0.04))

    @classmethod
    def from_timm(
        cls,
        model_or_name: Union[str, nn.Module],
        pretrained: bool = False,
        fold_ln: bool = False,
        device: Optional[Union[str, torch.device]] = None,
        class_names: Optional[list[str]] = None,
        **timm_kwargs: Any,
    ) -> "HookedViT":
        """Convert a timm Vision Transformer (a module, or a name for ``timm.create_model``).

        See `vit_interp.loading.timm.hooked_vit_from_timm` for the arguments and supported features.
        """
        from vit_interp.loading.timm import hooked_vit_from_timm

        return hooked_vit_from_timm(
            model_or_name, pretrained=pretrained, fold_ln=fold_ln, device=device, class_names=class_names, **timm_kwargs
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[str, "os.PathLike[str]"],
        device: Optional[Union[str, torch.device]] = None,
        fold_ln: bool = False,
    ) -> "HookedViT":
        """Load a model shipped with vit-interp by name (offline), or a folder saved by `save_pretrained`.

        An unknown name raises an error listing the shipped models (`vit_interp.loading.available_models`).
        """
        from vit_interp.loading.pretrained import load_pretrained

        return load_pretrained(name_or_path, device=device, fold_ln=fold_ln)

    def save_pretrained(self, directory: Union[str, "os.PathLike[str]"], card: Optional[dict] = None) -> None:
        """Save weights (safetensors) and config (JSON), and optionally a model card, into ``directory``."""
        from vit_interp.loading.pretrained import save_pretrained

        save_pretrained(self, directory, card)

    def _apply(self, fn, recurse: bool = True):  # keeps cfg.device/dtype right after .to()/.cuda()
        out = super()._apply(fn, recurse)
        param = self.embed.W_E
        self.cfg.device = str(param.device)
        self.cfg.dtype = param.dtype
        return out

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Turn ``blocks.{l}.attn.hook_result`` (per-head outputs) on or off, like TransformerLens.

        Other hook points, and hooks attached to them, are kept.
        """
        self.cfg.use_attn_result = use_attn_result
        for block in self.blocks:
            block.attn.set_use_attn_result(use_attn_result)
        self.setup()

    def set_skip_pruned_heads(self, skip: bool) -> None:
        """Compute only the heads a 0/1 ``hook_head_mask`` keeps (grouping images by mask) instead of
        zeroing pruned heads' ``z``. Off by default: results then equal the masked dense path up to
        float rounding (not bitwise), and the dense path still runs whenever a hook watches q/k/v,
        scores, pattern, z or result, or a gradient flows through the mask.
        """
        for block in self.blocks:
            block.attn.skip_pruned_heads = bool(skip)

    # Forward ------------------------------------------------------------------------------------
    def forward(
        self,
        images: Any,
        *,
        stop_at_layer: Optional[int] = None,
        start_at_layer: Optional[int] = None,
    ) -> Tensor:
        """Run the model.

        Args:
            images: ``[batch, channels, height, width]`` float images of the model's dtype. With
                ``start_at_layer`` this is instead the residual stream ``[batch, pos, d_model]``
                entering that block.
            stop_at_layer: Run only blocks ``[start, stop)`` and return the residual stream
                ``[batch, pos, d_model]`` (TransformerLens semantics; negative values count from the
                end; 0 returns the embeddings).
            start_at_layer: Start at this block, reading the residual stream from ``images``.

        Returns:
            Logits ``[batch, n_classes]``, or the residual stream when ``stop_at_layer`` is set.
        """
        start = 0 if start_at_layer is None else self._layer_index(start_at_layer, "start_at_layer")
        stop = self.cfg.n_layers if stop_at_layer is None else self._layer_index(stop_at_layer, "stop_at_layer")
        if start_at_layer is None:
            resid = self.embed_images(images)
        else:
            resid = self._check_residual(images, start)
        for block in self.blocks[start:stop]:
            resid = block(resid)
        if stop_at_layer is not None:
            return resid
        return self.classify(resid)

    def embed_images(self, images: Any) -> Float[Tensor, "batch pos d_model"]:
        """Validated images → the residual stream entering block 0."""
        images = self.validate_images(images)
        embed = self.hook_embed(self.embed(images))
        pos_embed = self.hook_pos_embed(self.pos_embed(images.shape[0]))
        resid = embed + pos_embed
        return self.ln_pre(resid) if self.ln_pre is not None else resid

    def classify(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch n_classes"]:
        """Final residual stream → final norm, pooling, classifier."""
        if self.cfg.final_norm == "pre_pool":
            pooled = self.pool_positions(self.ln_final(resid))
        else:
            pooled = self.ln_final(self.pool_positions(resid))
        pooled = self.hook_pooled(pooled)
        return self.hook_logits(self.classifier(pooled))

    def pool_positions(self, x: Float[Tensor, "*lead pos d"]) -> Tensor:
        """Apply the model's pooling over the position axis (second to last) of any tensor.

        ``cls``: position 0; ``mean``: mean over patch tokens (all tokens with
        ``pool_include_prefix``); ``cls_dist``: positions 0 and 1, kept as a ``[..., 2, d]`` axis.
        Useful to pool a stack of residual components before ``cache.logit_attrs``.
        """
        if self.cfg.pool == "cls":
            return x[..., 0, :]
        if self.cfg.pool == "cls_dist":
            return x[..., :2, :]
        start = 0 if self.cfg.pool_include_prefix else self.cfg.n_prefix_tokens
        return x[..., start:, :].mean(dim=-2)

    # Input checks ---------------------------------------------------------------------------------
    def validate_images(self, images: Any) -> Tensor:
        """Check a batch of images and move it to the model's device; raise a one-line error if bad."""
        cfg = self.cfg
        expected = f"[batch, {cfg.in_channels}, {cfg.image_size[0]}, {cfg.image_size[1]}]"  # type: ignore[index]
        if not isinstance(images, Tensor):
            raise ImageDtypeError(
                f"images must be a torch.Tensor {expected}, got {type(images).__name__}; "
                "convert with torch.as_tensor or torch.stack"
            )
        if images.ndim == 3:
            raise ImageInputError(
                f"images have shape {list(images.shape)} (one image?) but the model expects {expected}; "
                "add a batch dimension with images.unsqueeze(0)"
            )
        if images.ndim != 4:
            raise ImageInputError(
                f"images have rank {images.ndim} (shape {list(images.shape)}) but the model expects "
                f"rank 4 {expected}; reshape them to [batch, channels, height, width]"
            )
        if not images.is_floating_point():
            raise ImageDtypeError(
                f"images have dtype {images.dtype} but the model needs {cfg.dtype}; convert with "
                f"images.to({cfg.dtype}) (and divide uint8 pixels by 255)"
            )
        if images.dtype != cfg.dtype:
            raise ImageDtypeError(
                f"images have dtype {images.dtype} but the model's parameters are {cfg.dtype}; "
                f"convert with images.to({cfg.dtype}) or the model with model.to({images.dtype})"
            )
        channels, height, width = images.shape[1:]
        if channels != cfg.in_channels:
            raise ImageInputError(
                f"images have {channels} channels but the model expects {cfg.in_channels}; convert "
                f"the images (e.g. images.expand(-1, {cfg.in_channels}, -1, -1) for grey to RGB) or "
                f"build the model with in_channels={channels}"
            )
        if (height, width) != tuple(cfg.image_size):  # type: ignore[arg-type]
            raise ImageInputError(
                f"image size {height}x{width} does not match model image_size "
                f"{cfg.image_size[0]}x{cfg.image_size[1]}; resize the images or rebuild the model"  # type: ignore[index]
            )
        images = images.to(self.embed.W_E.device)
        # A sum is finite iff no pixel is NaN/inf (barring overflow, which the full check clears).
        if not bool(torch.isfinite(images.sum())) and not bool((finite := torch.isfinite(images)).all()):
            n_nan = int(torch.isnan(images).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise ImageInputError(
                f"images contain {n_nan} NaN and {n_inf} infinite values; clean or drop those images "
                "before running the model"
            )
        return images

    def _layer_index(self, layer: int, name: str) -> int:
        n = self.cfg.n_layers
        if not isinstance(layer, int) or not -n <= layer <= n:
            raise ValueError(f"{name}={layer!r} is out of range for a model with {n} layers; use -{n}..{n}")
        return layer % n if layer < 0 else layer

    def _check_residual(self, resid: Any, layer: int) -> Tensor:
        shape = (self.cfg.n_ctx, self.cfg.d_model)
        if not isinstance(resid, Tensor) or resid.ndim != 3 or tuple(resid.shape[1:]) != shape:
            got = list(resid.shape) if isinstance(resid, Tensor) else type(resid).__name__
            raise ImageInputError(
                f"with start_at_layer={layer} the input must be the residual stream "
                f"[batch, {shape[0]}, {shape[1]}], got {got}; pass e.g. cache['blocks.{layer}.hook_resid_pre']"
            )
        return resid.to(self.embed.W_E.device)

    # Hooks ---------------------------------------------------------------------------------------
    def check_hook_name(self, name: str) -> None:
        """Raise `UnknownHookError` (with the closest names) if ``name`` is not a hook of this model."""
        if name in self.hook_dict:
            return
        if name.endswith("attn.hook_result") and name.replace("hook_result", "hook_z") in self.hook_dict:
            raise UnknownHookError(
                f"hook {name!r} is off on this model; call model.set_use_attn_result(True) first"
            )
        close = difflib.get_close_matches(name, list(self.hook_dict), n=3)
        hint = f"did you mean {close}?" if close else "list them with model.hook_dict.keys()"
        raise UnknownHookError(f"unknown hook name {name!r}; {hint}")

    def _check_hook_names(self, names: NamesFilter) -> None:
        if isinstance(names, str):
            self.check_hook_name(names)
        elif isinstance(names, (list, tuple)):
            for name in names:
                self.check_hook_name(name)

    def add_hook(self, name, hook, dir="fwd", is_permanent=False, level=None, prepend=False) -> None:  # noqa: D102
        self._check_hook_names(name)
        super().add_hook(name, hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    @contextmanager
    def hooks(self, fwd_hooks=[], bwd_hooks=[], reset_hooks_end=True, clear_contexts=False) -> Iterator["HookedViT"]:  # noqa: B006,D102
        for name, _ in list(fwd_hooks) + list(bwd_hooks):
            self._check_hook_names(name)
        with super().hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts) as model:
            yield model

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: Optional[Union[str, torch.device]] = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        metric: Optional[Callable[[Tensor], Tensor]] = None,
        **model_kwargs: Any,
    ) -> tuple[Tensor, Union[ActivationCache, dict[str, Tensor]]]:
        """Run the model and cache activations, like TransformerLens' ``HookedTransformer``.

        Returns ``(output, ActivationCache)`` (a plain dict with ``return_cache_object=False``).
        Unlike TransformerLens 3.9, ``remove_batch_dim`` and ``pos_slice`` also work with the hooks
        that have no position axis (``hook_head_mask``, ``hook_pooled``, ``hook_logits``). Logits are
        not a scalar, so ``incl_bwd=True`` needs ``metric``, a function from the output to the scalar
        to differentiate (e.g. ``lambda logits: logits[:, 3].sum()``); gradients are cached as
        ``<hook>_grad``.
        """
        self._check_hook_names(names_filter)
        if incl_bwd and metric is None:
            raise ValueError(
                "incl_bwd=True needs metric=, a function from the model output to a scalar to "
                "differentiate (e.g. metric=lambda logits: logits[:, 3].sum())"
            )
        cache_dict, fwd_hooks, bwd_hooks = self.get_caching_hooks(
            list(names_filter) if isinstance(names_filter, tuple) else names_filter, incl_bwd, device
        )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                metric(out).backward()  # type: ignore[misc]
        if pos_slice is not None:
            pos_slice = Slice.unwrap(pos_slice)  # like TransformerLens: an int keeps the axis
            for name, tensor in cache_dict.items():
                pos_dim = self.pos_dim(name.removesuffix("_grad"))
                if pos_dim is not None:
                    cache_dict[name] = pos_slice.apply(tensor, dim=pos_dim)
        cache = ActivationCache(cache_dict, self, has_batch_dim=True)
        if remove_batch_dim:
            cache.remove_batch_dim()
        return out, (cache if return_cache_object else cache.cache_dict)

    def pos_dim(self, hook_name: str) -> Optional[int]:
        """The token-position axis of a hook's activation (negative index), or None if it has none."""
        if ".hook_sae_" in hook_name:  # a spliced SAE's hooks follow the hook they are spliced at
            return self._sae_pos_dim(hook_name)
        leaf = hook_name.rsplit(".", 1)[-1]
        if leaf in _HEAD_POS_SUFFIXES:
            return -3
        if leaf in ("hook_head_mask", "hook_pooled", "hook_logits"):
            return None
        if hook_name.startswith("ln_final.") and self.cfg.final_norm == "post_pool":
            return None if self.cfg.pool != "cls_dist" else -2
        return -2

    # Weights ---------------------------------------------------------------------------------------
    def _stack(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks])

    @property
    def W_E(self) -> Float[Tensor, "d_model channels ph pw"]:
        """Patch-embedding convolution weight."""
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_pos d_model"]:
        """Position embedding."""
        return self.pos_embed.W_pos

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Query weights of all layers."""
        return self._stack("attn", "W_Q")

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Key weights of all layers."""
        return self._stack("attn", "W_K")

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        """Value weights of all layers."""
        return self._stack("attn", "W_V")

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        """Output weights of all layers."""
        return self._stack("attn", "W_O")

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Query biases of all layers."""
        return self._stack("attn", "b_Q")

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Key biases of all layers."""
        return self._stack("attn", "b_K")

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        """Value biases of all layers."""
        return self._stack("attn", "b_V")

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        """Output biases of all layers."""
        return self._stack("attn", "b_O")

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        """MLP input weights of all layers."""
        return self._stack("mlp", "W_in")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        """MLP input biases of all layers."""
        return self._stack("mlp", "b_in")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        """MLP output weights of all layers."""
        return self._stack("mlp", "W_out")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        """MLP output biases of all layers."""
        return self._stack("mlp", "b_out")

    @property
    def W_U(self) -> Float[Tensor, "d_model n_classes"]:
        """Classifier weight (class-token classifier for distilled models)."""
        return self.classifier.W_U

    @property
    def b_U(self) -> Float[Tensor, " n_classes"]:
        """Classifier bias."""
        return self.classifier.b_U

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer and head, ``[n_layers, n_heads, d_model, d_model]``."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer and head, ``[n_layers, n_heads, d_model, d_model]``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    # TransformerLens analysis interface --------------------------------------------------------------
    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the attention (and MLP) output biases written before ``layer`` (TransformerLens)."""
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"layer {layer} is out of range; use 0..{self.cfg.n_layers}")
        bias = torch.zeros(self.cfg.d_model, dtype=self.cfg.dtype, device=self.embed.W_E.device)
        for block in self.blocks[:layer]:
            bias = bias + block.attn.b_O
            if include_mlp_biases:
                bias = bias + block.mlp.b_out
        if mlp_input:
            if layer == self.cfg.n_layers:
                raise ValueError("mlp_input=True needs layer < n_layers: there is no MLP after the last block")
            bias = bias + self.blocks[layer].attn.b_O
        return bias

    def to_single_token(self, class_name: str) -> int:
        """Class name → class index (TransformerLens calls this for string "tokens")."""
        names = self.cfg.class_names
        if names is None:
            raise ClassIndexError(
                f"class {class_name!r} given by name but the model has no class_names; pass an index "
                f"in 0..{self.cfg.n_classes - 1} or set cfg.class_names"
            )
        if class_name not in names:
            close = difflib.get_close_matches(class_name, names, n=3)
            raise ClassIndexError(f"unknown class name {class_name!r}; closest: {close or names[:5]}")
        matches = [i for i, name in enumerate(names) if name == class_name]
        if len(matches) > 1:  # e.g. ImageNet's two "crane"s (bird, machine)
            raise ClassIndexError(f"class name {class_name!r} is ambiguous (indices {matches}); pass the index")
        return matches[0]

    def class_indices(self, classes: ClassesLike) -> Tensor:
        """Class indices or names (int, str, list, tensor) → validated ``long`` tensor."""
        if isinstance(classes, str):
            classes = self.to_single_token(classes)
        elif isinstance(classes, (list, tuple)):
            classes = [self.to_single_token(c) if isinstance(c, str) else c for c in classes]
        index = torch.as_tensor(classes, device=self.embed.W_E.device)
        if index.is_floating_point() or index.dtype == torch.bool:
            raise ClassIndexError(f"class indices must be integers, got dtype {index.dtype}; use .long()")
        n = self.cfg.n_classes
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            bad = index[(index < 0) | (index >= n)].flatten()[0].item()
            raise ClassIndexError(f"class index {bad} is out of range for a model with {n} classes; use 0..{n - 1}")
        return index.long()

    def tokens_to_residual_directions(self, classes: ClassesLike) -> Tensor:
        """Class index (or name) → the direction in the final residual stream that writes its logit.

        The final LayerNorm's weight is folded in, so ``cache.logit_attrs(stack, classes)``, which
        divides by the LayerNorm scale, gives contributions that sum to the logit minus
        ``b_U + b_ln @ W_U``. Shape ``[*classes.shape, d_model]``; for a distilled model
        ``[*classes.shape, 2, d_model]`` (class and distillation token, each halved).
        """
        index = self.class_indices(classes)
        directions = [self.classifier.W_U]
        if self.cfg.pool == "cls_dist":
            directions.append(self.classifier.W_U_dist)
        if self.ln_final.mode == "LN":
            directions = [self.ln_final.w[:, None] * w for w in directions]
        out = [w.T[index] for w in directions]
        if self.cfg.pool == "cls_dist":
            return torch.stack(out, dim=-2) / 2
        return out[0]
