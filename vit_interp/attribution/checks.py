"""Input checks shared by the attribution functions: each bad input is a one-line typed error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from vit_interp.errors import ClassIndexError, ConfigError, LatentIndexError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT

SAE_OUTPUT = ".hook_sae_output"
_RUNTIME_NORMS = ("layer_norm", "constant_norm_rescale")  # decoder output scaled per input: not affine in a


def check_latent(latent: Any, d_sae: int) -> int:
    """``latent`` as an int in ``[0, d_sae)``, or a one-line `LatentIndexError`."""
    if isinstance(latent, Tensor) and latent.numel() == 1:
        latent = int(latent)
    if isinstance(latent, np.integer):
        latent = int(latent)
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < d_sae:
        raise LatentIndexError(f"latent {latent!r} is out of range; this SAE has latents 0..{d_sae - 1}")
    return latent


def class_index(class_: Any, class_names: Sequence[str]) -> int:
    """A class name or index → index into ``class_names``, or a one-line `ClassIndexError`."""
    if isinstance(class_, str):
        if class_ not in class_names:
            raise ClassIndexError(f"unknown class {class_!r}; choose one of {list(class_names)}")
        return list(class_names).index(class_)
    if isinstance(class_, Tensor) and class_.numel() == 1:
        class_ = int(class_)
    if isinstance(class_, bool) or not isinstance(class_, (int, np.integer)) or not 0 <= class_ < len(class_names):
        raise ClassIndexError(f"class {class_!r} is not a class name or an index in [0, {len(class_names)})")
    return int(class_)


def selected_classes(classes: Any, class_names: Sequence[str]) -> list[int]:
    """Classes to attribute separately: ``None`` → no per-class results; ``"all"`` → every class; else a list of names/indices."""
    if classes is None:
        return []
    if isinstance(classes, str) and classes == "all":
        return list(range(len(class_names)))
    items = [classes] if isinstance(classes, (str, int)) else list(classes)
    chosen = [class_index(c, class_names) for c in items]
    if len(set(chosen)) != len(chosen):
        raise ClassIndexError(f"classes {items} name a class twice; list each class once")
    return chosen


def check_model(model: Any) -> HookedViT:
    """``model`` if it is a `HookedViT`, else a one-line `ConfigError`."""
    if not isinstance(model, HookedViT):
        raise ConfigError(f"expected a HookedViT, got {type(model).__name__}; load one with HookedViT.from_pretrained")
    return model


def check_gate(gate: Any, model: HookedViT) -> HeadGate:
    """``gate`` if it is a `HeadGate` sized for ``model``, else a one-line `ConfigError`."""
    if not isinstance(gate, HeadGate):
        raise ConfigError(f"expected a HeadGate, got {type(gate).__name__}; load one with HeadGate.load(name_or_folder)")
    cfg = model.cfg
    if (gate.d_model, gate.n_heads) != (cfg.d_model, cfg.n_heads):
        raise ConfigError(f"gate built for d_model={gate.d_model}, n_heads={gate.n_heads} but the model has "
                          f"d_model={cfg.d_model}, n_heads={cfg.n_heads}; use the gate trained for this model")
    return gate


def resolve_layer(gate: HeadGate, layer: Any) -> int:
    """The gated layer to attribute: ``layer``, or the gate's only layer when None."""
    if layer is None:
        if len(gate.layers) != 1:
            raise ConfigError(f"the gate gates layers {gate.layers}; pass layer= one of them")
        return gate.layers[0]
    if isinstance(layer, bool) or not isinstance(layer, int) or layer not in gate.layers:
        raise ConfigError(f"layer {layer!r} is not gated by this gate (gated layers {gate.layers}); "
                          f"pass one of them or a gate for layer {layer!r}")
    return layer


def check_sae(sae: Any, model: HookedViT, gate: HeadGate, layer: int) -> str:
    """The SAE's hook name, after checking the SAE sits where the gate of ``layer`` reads and fits the model."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not all(hasattr(sae, a) for a in ("encode", "decode")) or not hasattr(cfg, "d_sae"):
        raise ConfigError(f"expected a sae-lens SAE (with encode, decode and cfg.d_sae), got {type(sae).__name__}")
    hook_name = getattr(getattr(cfg, "metadata", None), "hook_name", None)
    if not hook_name:
        raise ConfigError("the SAE has no cfg.metadata.hook_name; set it to the hook the gate reads, "
                          f"e.g. {gate.read_hooks[layer].removesuffix(SAE_OUTPUT)!r}")
    read = gate.read_hooks[layer]
    if read not in (hook_name, hook_name + SAE_OUTPUT):
        raise ConfigError(f"the SAE sits at {hook_name!r} but the gate of layer {layer} reads {read!r}; "
                          f"use an SAE trained on {read.removesuffix(SAE_OUTPUT)!r}")
    model.check_hook_name(hook_name)
    if cfg.d_in != model.cfg.d_model:
        raise ConfigError(f"SAE d_in {cfg.d_in} does not match d_model {model.cfg.d_model} of {hook_name!r}; "
                          "use the SAE trained on this model")
    norm = getattr(cfg, "normalize_activations", "none")
    if norm in _RUNTIME_NORMS:
        raise ConfigError(f"the SAE rescales its output per input (normalize_activations={norm!r}), so a latent has "
                          "no fixed direction at the gate; use an SAE with 'none' or 'expected_average_only_in'")
    return hook_name


def gate_token(model: HookedViT, gate: HeadGate) -> tuple[int, str]:
    """The position the gate reads, and the splice/harvest token selection that covers it."""
    token = gate.token % model.cfg.n_ctx
    return token, ("cls" if token == 0 and model.cfg.class_token else "all")
