"""`ViTConfig`: the architecture of a `HookedViT`.

Field names follow TransformerLens (``n_layers``, ``d_model``, ``n_heads``, ``d_head``, ``d_mlp``,
``act_fn``, ``normalization_type``, ``device``) so that TransformerLens utilities that read
``model.cfg`` (``ActivationCache``, ``patching``) work unchanged; the image fields describe the
patch embedding, the extra tokens and the classifier.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Literal, Optional, Union

import torch

from vit_interp.errors import ConfigError

NormalizationType = Literal["LN", "LNPre"]

ACT_FNS: tuple[str, ...] = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")
NORMALIZATION_TYPES: tuple[str, ...] = ("LN", "LNPre")
POOLS: tuple[str, ...] = ("cls", "mean", "cls_dist")
FINAL_NORMS: tuple[str, ...] = ("pre_pool", "post_pool")

SizeLike = Union[int, Sequence[int]]


def _pair(value: SizeLike, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ConfigError(f"{name} must be an int or a (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def _dtype_from_name(value: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype {value!r} is not a floating torch dtype; use e.g. 'float32'")
    return dtype


@dataclass
class ViTConfig:
    """Architecture of a pre-LN Vision Transformer classifier.

    Args:
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        n_heads: Attention heads per block.
        d_head: Width of each head; defaults to ``d_model // n_heads``.
        d_mlp: Hidden width of each MLP; defaults to ``4 * d_model``.
        act_fn: MLP activation: ``gelu`` (exact), ``gelu_tanh``, ``quick_gelu``, ``relu``, ``silu``.
        normalization_type: ``LN`` (LayerNorm with weight and bias) or ``LNPre`` (centre and scale
            only; the weights have been folded into the following layer, see ``fold_ln``).
        eps: LayerNorm epsilon (timm ViTs use 1e-6).
        image_size: Input height and width in pixels (int or ``(h, w)``).
        patch_size: Patch height and width in pixels (int or ``(h, w)``).
        in_channels: Image channels.
        n_classes: Classifier outputs.
        class_names: Optional names of the classes, ``len == n_classes``.
        pool: What the classifier reads: ``cls`` (class token), ``mean`` (mean of the patch tokens,
            timm ``global_pool='avg'``) or ``cls_dist`` (DeiT distilled: class and distillation
            tokens, each with its own classifier, logits averaged).
        pool_include_prefix: With ``mean`` pooling, average the extra tokens too.
        final_norm: Where ``ln_final`` sits: ``pre_pool`` (timm ``norm``, on every token) or
            ``post_pool`` (timm ``fc_norm``, on the pooled vector).
        class_token: Whether a class token is prepended (position 0).
        distill_token: Whether a DeiT distillation token follows the class token.
        n_register_tokens: Register tokens after the class/distillation tokens.
        pos_embed_prefix: Whether the position embedding has rows for the extra tokens (timm's
            ``no_embed_class=False``); if not, extra tokens get no position embedding.
        ln_pre: LayerNorm after the embeddings, before the blocks (CLIP-style ``pre_norm``).
        use_attn_result: Expose ``blocks.{l}.attn.hook_result`` (per-head outputs, costs memory).
        image_mean: Per-channel mean used to normalise images for this model (informational).
        image_std: Per-channel std used to normalise images for this model (informational).
        device: Device of the parameters (kept up to date by ``HookedViT.to``).
        dtype: Parameter dtype.
        seed: Seed of the random initialisation (None: torch's global RNG).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: Optional[int] = None
    d_mlp: Optional[int] = None
    act_fn: str = "gelu"
    normalization_type: str = "LN"
    eps: float = 1e-6
    image_size: SizeLike = 224
    patch_size: SizeLike = 16
    in_channels: int = 3
    n_classes: int = 1000
    class_names: Optional[Sequence[str]] = None
    pool: str = "cls"
    pool_include_prefix: bool = False
    final_norm: str = "pre_pool"
    class_token: bool = True
    distill_token: bool = False
    n_register_tokens: int = 0
    pos_embed_prefix: bool = True
    ln_pre: bool = False
    use_attn_result: bool = False
    image_mean: Optional[Sequence[float]] = None
    image_std: Optional[Sequence[float]] = None
    device: Optional[str] = None
    dtype: Union[str, torch.dtype] = torch.float32
    seed: Optional[int] = None
    # TransformerLens reads these; a ViT has no attention-only or grouped-query variants.
    attn_only: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        self.dtype = _dtype_from_name(self.dtype)
        if self.d_head is None:
            if self.n_heads <= 0 or self.d_model % self.n_heads:
                raise ConfigError(
                    f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                    "pass d_head explicitly or change n_heads"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "in_channels", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.n_register_tokens < 0:
            raise ConfigError(f"n_register_tokens must be >= 0, got {self.n_register_tokens}")
        self._check_choice("act_fn", ACT_FNS)
        self._check_choice("normalization_type", NORMALIZATION_TYPES)
        self._check_choice("pool", POOLS)
        self._check_choice("final_norm", FINAL_NORMS)
        for (img, patch, axis) in zip(self.image_size, self.patch_size, ("height", "width")):
            if patch <= 0 or img % patch:
                raise ConfigError(
                    f"image {axis} {img} is not divisible by patch {axis} {patch}; "
                    "pick an image_size that is a multiple of patch_size"
                )
        if self.pool == "cls" and not self.class_token:
            raise ConfigError("pool='cls' needs a class token; set class_token=True or pool='mean'")
        if self.pool == "cls_dist" and not (self.class_token and self.distill_token):
            raise ConfigError(
                "pool='cls_dist' needs class and distillation tokens; set class_token=True and "
                "distill_token=True"
            )
        if self.distill_token and not self.class_token:
            raise ConfigError("distill_token=True needs class_token=True (DeiT order: cls, dist)")
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]
            if len(self.class_names) != self.n_classes:
                raise ConfigError(
                    f"class_names has {len(self.class_names)} names but n_classes is "
                    f"{self.n_classes}; give one name per class"
                )
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != self.in_channels:
                    raise ConfigError(
                        f"{name} has {len(value)} entries but in_channels is {self.in_channels}; "
                        "give one per channel"
                    )
                setattr(self, name, value)

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not supported; choose one of {list(choices)}")

    # Derived sizes -------------------------------------------------------------------------------
    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along height and width."""
        return (
            self.image_size[0] // self.patch_size[0],  # type: ignore[index]
            self.image_size[1] // self.patch_size[1],  # type: ignore[index]
        )

    @property
    def n_patches(self) -> int:
        """Number of patch tokens."""
        rows, cols = self.grid_size
        return rows * cols

    @property
    def n_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation and register tokens, in that order."""
        return int(self.class_token) + int(self.distill_token) + self.n_register_tokens

    @property
    def n_ctx(self) -> int:
        """Sequence length seen by the blocks (TransformerLens name)."""
        return self.n_prefix_tokens + self.n_patches

    @property
    def n_key_value_heads(self) -> int:
        """TransformerLens' patching reads this; ViTs have one key/value head per query head."""
        return self.n_heads

    # (De)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that `from_dict` turns back into an equal config."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        out["dtype"] = str(self.dtype).removeprefix("torch.")
        out["image_size"] = list(self.image_size)  # type: ignore[arg-type]
        out["patch_size"] = list(self.patch_size)  # type: ignore[arg-type]
        for name in ("image_mean", "image_std"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViTConfig":
        """Build a config from `to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ViTConfig fields {unknown}; remove them or upgrade vit-interp")
        return cls(**data)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> "ViTConfig":
        """A copy with some fields changed (validated again)."""
        data = self.to_dict()
        data.update(changes)
        return ViTConfig.from_dict(data)
