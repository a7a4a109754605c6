"""AdaViT-style dynamic head gates that act on a `HookedViT` only through its hook points.

For each gated layer ``l`` a decision network (AdaViT: one ``Linear(d_model, n_heads)``) reads one
token (default: CLS) of a hook that fires before layer ``l``'s attention output (default:
``blocks.{l}.hook_resid_pre``) and writes a keep mask into ``blocks.{l}.attn.hook_head_mask``. The
mask is therefore cached, patched and plotted like any other activation, and any other hook on the
head mask composes with the gate (the gate multiplies the mask it receives).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.config import ViTConfig
from vit_interp.errors import ConfigError
from vit_interp.gating.gumbel import gumbel_sigmoid, keep_decisions
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_tensors_atomic
from vit_interp.loading.pretrained import resolve_folder, shipped

PRESETS = ("final", "adavit")
GATE_WEIGHTS, GATE_SPEC = "gate.safetensors", "gate.json"
Hook = Callable[[Tensor, HookPoint], Optional[Tensor]]


def available_gates() -> list[str]:
    """Names of the gates shipped with vit-interp (``HeadGate.load(name)`` works offline)."""
    return shipped((GATE_SPEC, GATE_WEIGHTS))


def resolve_gate_dir(name_or_path: str | os.PathLike) -> Path:
    """A folder written by `HeadGate.save`, or the name of a shipped gate."""
    return resolve_folder(name_or_path, (GATE_SPEC, GATE_WEIGHTS), "gate")


def mask_hook_name(layer: int) -> str:
    """Where a gate writes: ``blocks.{layer}.attn.hook_head_mask``."""
    return f"blocks.{layer}.attn.hook_head_mask"


class HeadGate(nn.Module):
    """Decision networks for a set of layers, attachable to a `HookedViT`.

    While the *model* is in ``train()`` mode decisions are Gumbel-sigmoid samples (temperature
    ``tau``) with a hard 0.5 threshold and a straight-through gradient; in ``eval()`` mode head ``h``
    is kept iff ``sigmoid(logit_h) > 0.5``. (One switch, the model's: a gate attached to a model in
    eval mode is deterministic.) Kept heads are not rescaled. After each forward pass,
    ``last_logits[l]`` and ``last_masks[l]`` (``[batch, n_heads]``) hold what the gate decided.

    Args:
        d_model: Width of the vectors the decision networks read.
        n_heads: Heads per gated layer.
        layers: Gated layers.
        read_hooks: One hook name per layer (default ``blocks.{l}.hook_resid_pre``); it must fire
            before ``blocks.{l}.attn.hook_head_mask`` and give ``[batch, pos, d_model]``.
        token: Position read from the hook (0: CLS).
        tau: Gumbel-sigmoid temperature (AdaViT: 5).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        layers: Sequence[int],
        read_hooks: Optional[Sequence[str]] = None,
        token: int = 0,
        tau: float = 5.0,
    ):
        super().__init__()
        layers = [int(layer) for layer in layers]
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ConfigError(f"layers must be distinct non-negative block indices, got {layers}")
        read_hooks = list(read_hooks) if read_hooks is not None else [f"blocks.{l}.hook_resid_pre" for l in layers]
        if len(read_hooks) != len(layers):
            raise ConfigError(f"{len(read_hooks)} read hooks for {len(layers)} gated layers; give one per layer")
        if not tau > 0:
            raise ConfigError(f"tau must be positive, got {tau}")
        self.d_model, self.n_heads, self.token, self.tau = d_model, n_heads, token, tau
        self.layers = layers
        self.read_hooks = dict(zip(layers, read_hooks))
        self.decision = nn.ModuleDict({str(l): nn.Linear(d_model, n_heads) for l in layers})
        self.generator: Optional[torch.Generator] = None  # seeds the Gumbel noise when set
        self.last_logits: dict[int, Tensor] = {}
        self.last_masks: dict[int, Tensor] = {}
        self._inputs: dict[int, Tensor] = {}
        self._attached: dict[int, list[Hook]] = {}  # id(model) -> our hook functions

    @classmethod
    def preset(cls, name: str, cfg: ViTConfig, **kwargs) -> "HeadGate":
        """``final``: only the last block, reading the residual entering it (the paper's system);
        ``adavit``: every block after the first, each reading its own input (AdaViT)."""
        if name == "final":
            layers = [cfg.n_layers - 1]
        elif name == "adavit":
            layers = list(range(1, cfg.n_layers))
            if not layers:
                raise ConfigError("preset 'adavit' gates blocks 1..n_layers-1, but the model has one block")
        else:
            raise ConfigError(f"unknown gate preset {name!r}; choose one of {list(PRESETS)}")
        return cls(cfg.d_model, cfg.n_heads, layers, **kwargs)

    # Decisions ---------------------------------------------------------------------------------------
    def decide(self, layer: int, features: Float[Tensor, "batch d_model"], sample: bool = False) -> Float[Tensor, "batch n_heads"]:
        """Keep mask of ``layer`` for these input vectors: Gumbel-sampled if ``sample``, else thresholded."""
        logits = self.decision[str(layer)](features)
        mask = gumbel_sigmoid(logits, self.tau, hard=True, generator=self.generator) if sample else keep_decisions(logits)
        self.last_logits[layer], self.last_masks[layer] = logits, mask
        return mask

    def usage(self) -> Tensor:
        """Mean keep rate over the last forward's batch, gated layers and heads (AdaViT's head usage)."""
        if not self.last_masks:
            raise ConfigError("no decisions yet: run the gated model once before asking for usage")
        return torch.stack([self.last_masks[l] for l in self.layers]).mean()

    def reading(self, read_hooks: dict[int, str]) -> "HeadGate":
        """The same decision networks (shared, not copied) reading other hooks for some layers.

        E.g. ``gate.reading({5: "blocks.5.hook_resid_pre.hook_sae_output"})`` makes the final gate read
        an SAE's output spliced at its usual input.
        """
        unknown = sorted(set(read_hooks) - set(self.layers))
        if unknown:
            raise ConfigError(f"layers {unknown} are not gated by this gate (it gates {self.layers})")
        hooks = [read_hooks.get(layer, self.read_hooks[layer]) for layer in self.layers]
        view = HeadGate(self.d_model, self.n_heads, self.layers, read_hooks=hooks, token=self.token, tau=self.tau)
        view.decision = self.decision
        return view

    # Files -------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, card: Optional[dict] = None) -> None:
        """Write ``gate.safetensors`` (decision networks) and ``gate.json`` (how to rebuild, + card)."""
        directory = Path(directory)
        spec = {"d_model": self.d_model, "n_heads": self.n_heads, "layers": self.layers,
                "read_hooks": [self.read_hooks[l] for l in self.layers], "token": self.token, "tau": self.tau}
        save_tensors_atomic(self.state_dict(), directory / GATE_WEIGHTS)
        save_json_atomic({"gate": spec, "card": card or {}}, directory / GATE_SPEC)

    @classmethod
    def load(cls, name_or_path: str | os.PathLike) -> "HeadGate":
        """Rebuild a gate written by `save`, from its folder or a shipped gate's name (`available_gates`)."""
        directory = resolve_gate_dir(name_or_path)
        gate = cls(**json.loads((directory / GATE_SPEC).read_text())["gate"])
        gate.load_state_dict(load_file(str(directory / GATE_WEIGHTS)))
        return gate

    from_pretrained = load

    @staticmethod
    def load_card(name_or_path: str | os.PathLike) -> dict:
        """The card saved with a gate (command, settings, test results), by folder or shipped name."""
        directory = resolve_gate_dir(name_or_path)
        return json.loads((directory / GATE_SPEC).read_text())["card"]

    # Hooks -------------------------------------------------------------------------------------------
    def fwd_hooks(self) -> list[tuple[str, Hook]]:
        """The (hook name, function) pairs that implement the gate, for ``run_with_hooks``/``hooks()``."""
        pairs: list[tuple[str, Hook]] = []
        for layer in self.layers:
            pairs.append((self.read_hooks[layer], self._reader(layer)))
            pairs.append((mask_hook_name(layer), self._writer(layer)))
        return pairs

    def _reader(self, layer: int) -> Hook:
        def read(activation: Tensor, hook: HookPoint) -> None:
            self._inputs[layer] = activation[:, self.token]

        return read

    def _writer(self, layer: int) -> Hook:
        def write(mask: Tensor, hook: HookPoint) -> Tensor:
            features = self._inputs.pop(layer, None)
            if features is None:
                raise ConfigError(f"gate for layer {layer} found no input from {self.read_hooks[layer]}; was the forward pass started mid-network?")
            return mask * self.decide(layer, features, sample=hook.training).to(mask.dtype)

        return write

    def check_compatible(self, model: HookedViT) -> None:
        """Raise a one-line error if this gate cannot drive ``model``."""
        cfg = model.cfg
        if (self.d_model, self.n_heads) != (cfg.d_model, cfg.n_heads):
            raise ConfigError(
                f"gate built for d_model={self.d_model}, n_heads={self.n_heads} but the model has "
                f"d_model={cfg.d_model}, n_heads={cfg.n_heads}; build the gate with HeadGate.preset(name, model.cfg)"
            )
        bad = [l for l in self.layers if l >= cfg.n_layers]
        if bad:
            raise ConfigError(f"gated layers {bad} out of range for a model with {cfg.n_layers} layers; use 0..{cfg.n_layers - 1}")
        for layer in self.layers:
            name = self.read_hooks[layer]
            model.check_hook_name(name)
            _check_read_hook(name, layer)
        if not -cfg.n_ctx <= self.token < cfg.n_ctx:
            raise ConfigError(f"token {self.token} is out of range for {cfg.n_ctx} positions; use 0 (CLS) .. {cfg.n_ctx - 1}")

    # Attaching ---------------------------------------------------------------------------------------
    def attach(self, model: HookedViT) -> "HeadGate":
        """Attach permanently (survives ``reset_hooks()`` and ``run_with_hooks``); undo with `detach`."""
        if id(model) in self._attached:
            raise ConfigError("this gate is already attached to that model; detach it first")
        self.check_compatible(model)
        functions = []
        for name, function in self.fwd_hooks():
            model.add_perma_hook(name, function)
            functions.append(function)
        self._attached[id(model)] = functions
        return self

    def detach(self, model: HookedViT) -> None:
        """Remove exactly this gate's hooks; other hooks, permanent or not, stay."""
        functions = self._attached.pop(id(model), None)
        if functions is None:
            raise ConfigError("this gate is not attached to that model")
        for hook_point in model.hook_dict.values():
            keep = []
            for handle in hook_point.fwd_hooks:
                if any(handle.user_hook is f for f in functions):
                    handle.hook.remove()
                else:
                    keep.append(handle)
            hook_point.fwd_hooks = keep
        self._inputs.clear()

    def is_attached(self, model: HookedViT) -> bool:
        """Whether this gate is attached to ``model`` permanently (`attach`)."""
        return id(model) in self._attached

    @contextmanager
    def attached(self, model: HookedViT) -> Iterator[HookedViT]:
        """``with gate.attached(model): ...`` gates the model inside the block only.

        If the gate is already attached permanently, the block runs with it as it is (the gate is
        never applied twice).
        """
        self.check_compatible(model)
        if id(model) in self._attached:
            yield model
            return
        with model.hooks(fwd_hooks=self.fwd_hooks()):
            try:
                yield model
            finally:
                self._inputs.clear()


# Hooks a gate can read: [batch, pos, d_model] streams. Names may continue (an SAE spliced at
# blocks.{l}.hook_resid_pre exposes blocks.{l}.hook_resid_pre.hook_sae_output, same shape).
_STREAMS_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "ln_pre.hook_normalized")
_STREAMS_IN_BLOCK = ("hook_resid_pre", "ln1.hook_normalized", "hook_attn_out", "hook_resid_mid",
                     "ln2.hook_normalized", "hook_mlp_out", "hook_resid_post")
_BEFORE_HEADS_IN_SAME_BLOCK = ("hook_resid_pre", "ln1.hook_normalized")


def _check_read_hook(name: str, layer: int) -> None:
    """A gate for ``layer`` must read a [batch, pos, d_model] stream computed before that layer's heads."""
    hint = f"read e.g. blocks.{layer}.hook_resid_pre (the stream entering the block)"
    if name.split(".hook_sae", 1)[0] in _STREAMS_BEFORE_BLOCKS:
        return
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit():
        block, rest = int(parts[1]), ".".join(parts[2:]).split(".hook_sae", 1)[0]
        if rest in _STREAMS_IN_BLOCK:
            if block < layer or (block == layer and rest in _BEFORE_HEADS_IN_SAME_BLOCK):
                return
            raise ConfigError(f"read hook {name!r} fires after {mask_hook_name(layer)}; a gate must read what is computed before the heads it decides: {hint}")
    raise ConfigError(f"read hook {name!r} is not a [batch, pos, d_model] residual-stream hook a gate can read; {hint}")
