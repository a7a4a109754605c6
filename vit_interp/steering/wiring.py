"""The paper's system as a context manager: SAE at the gate's input, the gate reading the SAE's output,
steering hooks on the SAE's latents.

Inside ``with steer(model, gate, sae, spec) as steering:``

- the SAE is spliced at its hook (``sae.cfg.metadata.hook_name``, e.g. ``blocks.5.hook_resid_pre``)
  with the error term, on the class token;
- the gate's layers that read that hook read ``<hook>.hook_sae_output`` instead — the
  reconstruction plus error term, i.e. exactly the original vector until a latent is steered;
- ``spec`` (a `SteeringSpec`) rewrites the latents at ``<hook>.hook_sae_acts_post``. With target
  ``gate`` the residual stream keeps the original vector (only the gate sees ``resid + W_decᵀ Δa``);
  with ``gate+stream`` the steered vector also replaces the stream.

Everything is hooks, so ``run_with_hooks`` and ``run_with_cache`` work inside the block (the cache
holds the SAE's latents, the steered ones, and the gate's masks). With ``spec=None`` or a scale of 1
the model is bit-identical to the gated model without the SAE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import torch
from torch import Tensor

from vit_interp.errors import ConfigError
from vit_interp.gating.head_gate import HeadGate
from vit_interp.hooked_vit import HookedViT
from vit_interp.steering.spec import SteeringSpec


class Steering:
    """Handle yielded by `steer`: the spec, which images it applies to, and the gate's last decisions."""

    def __init__(self, spec: Optional[SteeringSpec], gate: HeadGate, hook_name: str):
        self.spec = spec
        self.gate = gate  # the view reading the SAE output: its last_masks / last_logits are the steered decisions
        self.hook_name = hook_name
        self.rows: Optional[Tensor] = None  # bool [batch]: steer only these images (None: all)

    def only(self, rows: Optional[Tensor]) -> "Steering":
        """Steer only the images where ``rows`` (bool, ``[batch]``) is True in the next forward passes."""
        if rows is not None:
            rows = torch.as_tensor(rows, dtype=torch.bool)
            if rows.ndim != 1:
                raise ConfigError(f"rows must be a 1-D boolean mask over the batch, got shape {tuple(rows.shape)}")
        self.rows = rows
        return self

    def hook(self, acts: Tensor, hook: Any) -> Tensor:
        """The hook on ``hook_sae_acts_post`` that applies the spec."""
        assert self.spec is not None
        if self.rows is not None and len(self.rows) != acts.shape[0]:
            raise ConfigError(f"rows has {len(self.rows)} entries but the batch has {acts.shape[0]} images; "
                              "call steering.only(rows) with one flag per image")
        return self.spec.apply(acts, self.rows)


def gate_layers_reading(gate: HeadGate, hook_name: str) -> list[int]:
    """The gated layers whose decision network reads ``hook_name``."""
    return [layer for layer in gate.layers if gate.read_hooks[layer] == hook_name]


def check_wiring(model: HookedViT, gate: HeadGate, sae: Any, spec: Optional[SteeringSpec] = None) -> str:
    """Raise a one-line error unless ``sae`` sits where ``gate`` reads, on the token it reads; return the hook."""
    hook_name = getattr(getattr(sae.cfg, "metadata", None), "hook_name", None)
    if not hook_name:
        raise ConfigError("the SAE has no cfg.metadata.hook_name; set it to the hook it was trained on")
    gate.check_compatible(model)
    if not gate_layers_reading(gate, hook_name):
        raise ConfigError(f"the gate reads {sorted(set(gate.read_hooks.values()))} but the SAE sits at {hook_name!r}; "
                          "steering needs an SAE trained on the gate's input")
    if gate.token != 0:
        raise ConfigError(f"the gate reads token {gate.token}; steering splices the SAE on the class token (0) only")
    if gate.is_attached(model):
        raise ConfigError("the gate is attached to the model permanently; detach it (gate.detach(model)) — steering "
                          "attaches it reading the SAE's output")
    if spec is not None:
        if not isinstance(spec, SteeringSpec):
            raise ConfigError(f"spec must be a SteeringSpec, got {type(spec).__name__}")
        spec.check(sae.cfg.d_sae)
    return hook_name


@contextmanager
def steer(model: HookedViT, gate: HeadGate, sae: Any, spec: Optional[SteeringSpec] = None,
          rows: Optional[Tensor] = None) -> Iterator[Steering]:
    """Splice ``sae`` at the gate's input, gate from its output, and apply ``spec`` (see the module docstring).

    Args:
        model: The model (not permanently gated by ``gate``).
        gate: The head gate; its layers that read the SAE's hook read the SAE output instead.
        sae: A sae-lens SAE whose ``cfg.metadata.hook_name`` is a hook the gate reads.
        spec: What to steer; None splices and gates without steering (the baseline).
        rows: Steer only these images (bool ``[batch]``); change later with ``steering.only(rows)``.
    """
    hook_name = check_wiring(model, gate, sae, spec)
    view = gate.reading({layer: f"{hook_name}.hook_sae_output" for layer in gate_layers_reading(gate, hook_name)})
    steering = Steering(spec, view, hook_name).only(rows)
    feed_stream = spec is not None and spec.target == "gate+stream"
    hooks = [] if spec is None else [(f"{hook_name}.hook_sae_acts_post", steering.hook)]
    with model.saes([sae], use_error_term=True, feed_stream=feed_stream, tokens="cls"):
        with view.attached(model), model.hooks(fwd_hooks=hooks):
            yield steering
