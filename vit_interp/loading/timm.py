"""Convert timm Vision Transformers into `HookedViT` (the role of timm's ``checkpoint_filter_fn``).

Supported: timm ``VisionTransformer`` and ``VisionTransformerDistilled`` with class-token or average
pooling, ``fc_norm``, qkv bias on or off, projection bias on or off, distillation and register
tokens, position embeddings with or without rows for the extra tokens (``no_embed_class``), layer
scale (folded into the output weights), ``pre_norm``, any patch size, image size and channel count,
GELU / tanh-GELU / QuickGELU / ReLU / SiLU MLPs. Everything else is refused with
`UnsupportedModelError` naming the feature: a model is never converted approximately.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import torch
from einops import rearrange
from torch import Tensor, nn

from vit_interp.config import ViTConfig
from vit_interp.errors import UnsupportedModelError
from vit_interp.hooked_vit import HookedViT
from vit_interp.weight_processing import fold_layer_norm

logger = logging.getLogger(__name__)

# timm model classes we know and the feature that keeps them out.
_KNOWN_UNSUPPORTED = {
    "Beit": "relative position bias",
    "Eva": "rotary position embedding (RoPE) and SwiGLU MLPs",
    "VisionTransformerRelPos": "relative position bias",
    "VisionTransformerSAM": "windowed attention with relative position",
    "NaFlexVit": "variable-resolution patch embedding",
    "Vitamin": "a convolutional stem",
    "Hiera": "hierarchical (multi-scale) attention",
    "XCiT": "cross-covariance attention",
    "CaiT": "class-attention layers and talking heads",
    "VisionTransformerFlexi": "flexible patch sizes",
}


def _refuse(feature: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"timm model uses {feature}, which HookedViT cannot represent exactly; convert a plain timm "
        "VisionTransformer instead (see docs/loading.md for the supported features)"
    )


def _activation_name(act: nn.Module) -> str:
    kind = type(act).__name__
    if kind == "GELU":
        return "gelu_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    names = {"GELUTanh": "gelu_tanh", "QuickGELU": "quick_gelu", "ReLU": "relu", "SiLU": "silu"}
    if kind not in names:
        raise _refuse(f"the MLP activation {kind} (supported: GELU, GELUTanh, QuickGELU, ReLU, SiLU)")
    return names[kind]


def _layer_norm_eps(norm: nn.Module, where: str) -> float:
    if not isinstance(norm, nn.LayerNorm):
        raise _refuse(f"{type(norm).__name__} as the {where} normalisation (only LayerNorm is supported)")
    if not norm.elementwise_affine or norm.bias is None:
        raise _refuse(f"a LayerNorm without weight or bias at {where}")
    return float(norm.eps)


def _check_supported(model: nn.Module) -> None:
    from timm.layers import Mlp
    from timm.layers.attention import Attention as TimmAttention
    from timm.models.vision_transformer import Block, VisionTransformer

    kind = type(model).__name__
    if kind in _KNOWN_UNSUPPORTED:
        raise _refuse(f"{_KNOWN_UNSUPPORTED[kind]} ({kind})")
    if not isinstance(model, VisionTransformer) or kind not in ("VisionTransformer", "VisionTransformerDistilled"):
        raise UnsupportedModelError(
            f"cannot convert timm model class {kind}; only timm VisionTransformer and "
            "VisionTransformerDistilled (e.g. vit_*, deit_*) convert to HookedViT"
        )
    if getattr(model, "num_classes", 0) <= 0:
        raise UnsupportedModelError(
            "timm model has no classifier (num_classes=0); create it with num_classes=N, HookedViT is a classifier"
        )
    if model.pos_embed is None:
        raise _refuse("no learned absolute position embedding (pos_embed='none')")
    if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
        raise _refuse(f"global_pool={model.global_pool!r} (supported: 'token', 'avg')")
    patch_embed = model.patch_embed
    if type(patch_embed).__name__ != "PatchEmbed":
        raise _refuse(f"a hybrid convolutional stem ({type(patch_embed).__name__}) instead of a patch embedding")
    if not isinstance(getattr(patch_embed, "norm", nn.Identity()), nn.Identity):
        raise _refuse("a normalisation inside the patch embedding (embed_norm_layer)")
    if getattr(patch_embed, "dynamic_img_pad", False):
        raise _refuse("dynamic image padding (dynamic_img_pad=True)")
    proj = patch_embed.proj
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride or proj.padding != (0, 0):
        raise _refuse("a patch embedding that is not a non-overlapping convolution")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block:
            raise _refuse(f"the block type {type(block).__name__} in blocks.{i} (only timm Block, pre-norm)")
        attn, mlp = block.attn, block.mlp
        if type(attn) is not TimmAttention:
            raise _refuse(f"the attention type {type(attn).__name__} in blocks.{i}")
        if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
            raise _refuse("qk-norm (qk_norm=True)")
        if not isinstance(attn.norm, nn.Identity):
            raise _refuse("a norm on the attention output (scale_attn_norm=True)")
        if getattr(attn, "gate", None) is not None:
            raise _refuse("gated attention (gated=True)")
        if type(mlp) is not Mlp:
            raise _refuse(f"the MLP type {type(mlp).__name__} (e.g. SwiGLU) in blocks.{i}")
        if not isinstance(mlp.norm, nn.Identity):
            raise _refuse("a norm inside the MLP (scale_mlp_norm=True)")
        for ls in (block.ls1, block.ls2):
            if not isinstance(ls, nn.Identity) and not hasattr(ls, "gamma"):
                raise _refuse(f"the layer-scale type {type(ls).__name__}")


def config_from_timm(model: nn.Module) -> ViTConfig:
    """Read a `ViTConfig` off a timm VisionTransformer (after checking it is supported)."""
    _check_supported(model)
    block0 = model.blocks[0]
    final_norm = "post_pool" if not isinstance(model.fc_norm, nn.Identity) else "pre_pool"
    final = model.fc_norm if final_norm == "post_pool" else model.norm
    if isinstance(final, nn.Identity):
        raise _refuse("no final norm (final_norm=False)")
    eps = {_layer_norm_eps(final, "final")}
    for i, block in enumerate(model.blocks):
        eps |= {_layer_norm_eps(block.norm1, f"blocks.{i}.norm1"), _layer_norm_eps(block.norm2, f"blocks.{i}.norm2")}
        if _activation_name(block.mlp.act) != _activation_name(block0.mlp.act):
            raise _refuse("different MLP activations in different blocks")
    ln_pre = not isinstance(model.norm_pre, nn.Identity)
    if ln_pre:
        eps.add(_layer_norm_eps(model.norm_pre, "norm_pre"))
    if len(eps) > 1:
        raise _refuse(f"LayerNorms with different eps {sorted(eps)}")
    distilled = type(model).__name__ == "VisionTransformerDistilled"
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    class_token = model.cls_token is not None
    return ViTConfig(
        n_layers=len(model.blocks),
        d_model=model.embed_dim,
        n_heads=block0.attn.num_heads,
        d_head=block0.attn.head_dim,
        d_mlp=block0.mlp.fc1.out_features,
        act_fn=_activation_name(block0.mlp.act),  # type: ignore[arg-type]
        normalization_type="LN",
        eps=eps.pop(),
        image_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_channels=model.patch_embed.proj.in_channels,
        n_classes=model.num_classes,
        pool="cls_dist" if distilled else ("cls" if model.global_pool == "token" else "mean"),
        pool_include_prefix=bool(getattr(model, "pool_include_prefix", False)),
        final_norm=final_norm,  # type: ignore[arg-type]
        class_token=class_token,
        distill_token=distilled,
        n_register_tokens=int(getattr(model, "num_reg_tokens", 0)),
        pos_embed_prefix=not model.no_embed_class,
        ln_pre=ln_pre,
        image_mean=tuple(pretrained_cfg["mean"]) if len(pretrained_cfg.get("mean", ())) == model.patch_embed.proj.in_channels else None,
        image_std=tuple(pretrained_cfg["std"]) if len(pretrained_cfg.get("std", ())) == model.patch_embed.proj.in_channels else None,
        dtype=model.patch_embed.proj.weight.dtype,
    )


def _imagenet_class_names(model: nn.Module) -> Optional[list[str]]:
    """ImageNet class names (first synonym, e.g. 'goldfish') when timm recognises the label set."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != model.num_classes:
        return None
    return [info.index_to_description(i).split(",")[0].strip() for i in range(model.num_classes)]


def _ln(state: dict[str, Tensor], ours: str, norm: nn.Module) -> None:
    state[f"{ours}.w"] = norm.weight
    state[f"{ours}.b"] = norm.bias


def _bias(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else torch.zeros_like(linear.weight[:, 0])


def _layer_scale(ls: nn.Module, like: Tensor) -> Tensor:
    return ls.gamma if hasattr(ls, "gamma") else torch.ones_like(like)


@torch.no_grad()
def state_dict_from_timm(model: nn.Module, cfg: ViTConfig) -> dict[str, Tensor]:
    """Map a timm VisionTransformer's weights onto `HookedViT` parameter names and layouts.

    Layer scale is multiplied into the output projections (``ls · (W x + b) = (ls · W) x + ls · b``),
    so the hooked residual contributions are exactly what timm adds to its stream.
    """
    n_heads = cfg.n_heads
    state: dict[str, Tensor] = {
        "embed.W_E": model.patch_embed.proj.weight,
        "embed.b_E": model.patch_embed.proj.bias
        if model.patch_embed.proj.bias is not None
        else torch.zeros_like(model.patch_embed.proj.weight[:, 0, 0, 0]),
        "pos_embed.W_pos": model.pos_embed[0],
    }
    if model.cls_token is not None:
        state["embed.cls_token"] = model.cls_token[0, 0]
    if getattr(model, "dist_token", None) is not None:
        state["embed.dist_token"] = model.dist_token[0, 0]
    if model.reg_token is not None:
        state["embed.register_tokens"] = model.reg_token[0]
    if cfg.ln_pre:
        _ln(state, "ln_pre", model.norm_pre)
    for layer, block in enumerate(model.blocks):
        prefix = f"blocks.{layer}"
        _ln(state, f"{prefix}.ln1", block.norm1)
        _ln(state, f"{prefix}.ln2", block.norm2)
        qkv_weight = rearrange(block.attn.qkv.weight, "(three h e) d -> three h d e", three=3, h=n_heads)
        qkv_bias = rearrange(_bias(block.attn.qkv), "(three h e) -> three h e", three=3, h=n_heads)
        for i, name in enumerate("QKV"):
            state[f"{prefix}.attn.W_{name}"] = qkv_weight[i]
            state[f"{prefix}.attn.b_{name}"] = qkv_bias[i]
        gamma1 = _layer_scale(block.ls1, block.attn.proj.weight[:, 0])
        state[f"{prefix}.attn.W_O"] = rearrange(block.attn.proj.weight, "d (h e) -> h e d", h=n_heads) * gamma1
        state[f"{prefix}.attn.b_O"] = _bias(block.attn.proj) * gamma1
        gamma2 = _layer_scale(block.ls2, block.mlp.fc2.weight[:, 0])
        state[f"{prefix}.mlp.W_in"] = block.mlp.fc1.weight.T
        state[f"{prefix}.mlp.b_in"] = _bias(block.mlp.fc1)
        state[f"{prefix}.mlp.W_out"] = block.mlp.fc2.weight.T * gamma2
        state[f"{prefix}.mlp.b_out"] = _bias(block.mlp.fc2) * gamma2
    _ln(state, "ln_final", model.fc_norm if cfg.final_norm == "post_pool" else model.norm)
    state["classifier.W_U"] = model.head.weight.T
    state["classifier.b_U"] = _bias(model.head)
    if cfg.pool == "cls_dist":
        state["classifier.W_U_dist"] = model.head_dist.weight.T
        state["classifier.b_U_dist"] = _bias(model.head_dist)
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def hooked_vit_from_timm(
    model_or_name: Union[str, nn.Module],
    pretrained: bool = False,
    fold_ln: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    class_names: Optional[list[str]] = None,
    **timm_kwargs: Any,
) -> HookedViT:
    """Build a `HookedViT` equal to a timm Vision Transformer.

    Args:
        model_or_name: A timm model instance, or a name passed to ``timm.create_model``.
        pretrained: With a name, load timm's pretrained weights (timm downloads them; needs the network
            or a populated Hugging Face cache).
        fold_ln: Fold LayerNorm weights into the following layers (`fold_layer_norm`).
        device: Device of the returned model (default: the timm model's device).
        class_names: Names of the classifier's classes (one per output), stored in ``cfg.class_names``;
            by default ImageNet's names when timm recognises an ImageNet label set (1000 classes).
        **timm_kwargs: Passed to ``timm.create_model`` with a name (e.g. ``depth=2, img_size=32``).

    Returns:
        A `HookedViT` in eval mode with the same logits as ``model.eval()``.
    """
    import timm

    if isinstance(model_or_name, str):
        model = timm.create_model(model_or_name, pretrained=pretrained, **timm_kwargs)
    elif isinstance(model_or_name, nn.Module):
        if pretrained or timm_kwargs:
            raise ValueError(
                "pretrained=/timm kwargs only apply when converting by name; the model instance "
                "already has its weights and architecture"
            )
        model = model_or_name
    else:
        raise TypeError(f"expected a timm model or a timm model name, got {type(model_or_name).__name__}")
    cfg = config_from_timm(model)
    state = state_dict_from_timm(model, cfg)
    if fold_ln:
        state, cfg = fold_layer_norm(state, cfg)
    target = device if device is not None else model.patch_embed.proj.weight.device
    if class_names is None:
        class_names = _imagenet_class_names(model)
    cfg = cfg.replace(device=str(target), class_names=class_names)
    hooked = HookedViT(cfg)
    hooked.load_state_dict(state, strict=True)
    logger.info("converted timm %s: %d layers, %d heads, d_model %d", type(model).__name__, cfg.n_layers, cfg.n_heads, cfg.d_model)
    return hooked.eval()
