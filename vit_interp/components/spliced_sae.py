"""Splicing sae-lens SAEs into a `HookedViT`: sae-lens' ``HookedSAETransformer`` pattern, written for our model.

``model.add_sae(sae)`` replaces the hook point named by ``sae.cfg.metadata.hook_name`` (e.g.
``blocks.5.hook_resid_pre``) with a `SplicedSAE`: a ``HookPoint`` subclass at the **same path** that
runs the activation through the SAE and passes the SAE's output on. Differences from sae-lens, and why:

* **Hooks at the original name survive.** sae-lens puts a fresh ``HookPoint`` back on reset, dropping
  permanent hooks, and while it is spliced the original name leaves ``hook_dict``. Here the original
  ``HookPoint`` (the *host*) is kept and owns every hook registered at that name before, during and
  after the splice: `SplicedSAE` delegates ``add_hook``/``remove_hooks``/``fwd_hooks``/... to it and
  calls it on its output. So permanent hooks, an attached `vit_interp.gating.HeadGate` reading
  that name, ``hook.ctx`` and ``hook.name`` all behave the same across ``add_sae``/``reset_saes``,
  and hook functions always receive the host as ``hook``. Hooks at the original name fire on what
  flows on: the SAE output (reconstruction, plus error term if used), or the untouched activation
  with ``feed_stream=False``.
* **Exact error term.** With ``use_error_term=True`` sae-lens returns ``recon + (x - recon)``, which in
  floating point is not always ``x``. Here every element whose reconstruction no hook changed is
  ``x`` itself, so with no hook *editing* the SAE path the output is bit-identical to the clean
  model (hooks that only read, e.g. caching, do not count). Where a hook did change the
  reconstruction, the output is sae-lens' ``recon_edited + (x - recon_clean)``: only the SAE-path
  delta propagates. As in sae-lens the error term carries no gradient: gradients reach the layers
  upstream of the splice only through the SAE.
* **feed_stream** (for steering): ``feed_stream=False`` computes the SAE path (its hooks fire, a gate
  can read ``<name>.hook_sae_output`` and steering hooks on ``hook_sae_acts_post`` change what it
  reads) but passes the original activation on, untouched; hooks at the original name then see (and
  may edit) that original activation. In-place edits by hooks on the SAE's hook points never reach
  the stream except through the SAE output.
* **tokens**: apply the SAE at every position (``"all"``, sae-lens), only at the class token
  (``"cls"``, for SAEs trained on CLS rows) or only at patch tokens (``"patches"``). The SAE still
  runs on every position, so its hooks keep the host's ``[batch, pos, ...]`` shape, but other
  positions flow on unchanged.

The SAE's hook points appear as ``<name>.hook_sae_input``, ``.hook_sae_acts_pre``,
``.hook_sae_acts_post``, ``.hook_sae_recons``, ``.hook_sae_error`` and ``.hook_sae_output`` (sae-lens
names and behaviour: ``hook_sae_error`` fires only with the error term; ``hook_sae_recons`` is the
decoder output before any run-time de-normalisation and ``hook_z`` un-flattening). When nothing could
observe the SAE (no hook on its hook points, no gradient) and its result would not reach the stream
(error term, or ``feed_stream=False``), it is not run at all: splicing with the error term is free.
The SAE itself is kept out of the module tree (as in sae-lens): its parameters are not in
``model.parameters()``/``state_dict()`` and ``model.to()`` does not move it (a device mismatch is a
one-line error at the next forward; a dtype mismatch is cast at the SAE's input and output).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from vit_interp.components.fast_path import has_hooks, run_hook
from vit_interp.errors import ConfigError

logger = logging.getLogger(__name__)

# Same choices as `vit_interp.sae.harvest.TOKEN_CHOICES` (components may not import the sae package).
SPLICE_TOKENS = ("all", "cls", "patches")
_SAE_INNER_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons")
_SAE_HOOK_MARK = ".hook_sae_"
_D_MODEL_LEAVES = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post",
                   "hook_attn_out", "hook_mlp_out", "hook_normalized", "hook_pooled")


def _always_called(module: nn.Module, args: Any, output: Any) -> None:
    """A no-op torch hook. The fused fast paths (`vit_interp.components.fast_path`) skip hook points
    nobody listens to; this keeps a spliced SAE from being skipped (and silently bypassed)."""
    return None


def _on_host(name: str) -> Any:
    """A property reading and writing attribute ``name`` of the replaced hook point (the host)."""
    return property(lambda self: getattr(self.host, name), lambda self, value: setattr(self.host, name, value),
                    doc=f"The host hook point's ``{name}``.")


class SplicedSAE(HookPoint):
    """A hook point that runs a sae-lens SAE and passes its output on (see the module docstring).

    Built by `SAEHostMixin.add_sae`; not usually constructed directly.

    Args:
        sae: A sae-lens SAE (anything with ``encode``, ``decode``, ``cfg`` and ``hook_dict``).
        host: The ``HookPoint`` this module replaces; it keeps every hook registered at its name.
        use_error_term: Add ``x - recon_clean`` so that, unedited, the output equals the input.
        feed_stream: Pass the SAE output on (True) or the original activation (False).
        positions: ``(pos_dim, slice)``: apply the SAE output only at these positions of that axis
            (None: everywhere).
    """

    def __init__(
        self,
        sae: Any,
        host: HookPoint,
        use_error_term: bool = False,
        feed_stream: bool = True,
        positions: Optional[tuple[int, slice]] = None,
    ):
        # Not HookPoint.__init__: its defaults (fwd_hooks = [], ctx = {}, ...) would go through the
        # delegating properties below and wipe the host's hooks.
        nn.Module.__init__(self)
        # Kept in __dict__, not registered as submodules: the SAE's parameters stay out of the model's
        # state_dict (as in sae-lens) and the host stays out of hook_dict (its name is ours now).
        self.__dict__["_sae"] = sae
        self.__dict__["_host"] = host
        for name, hook in sae.hook_dict.items():
            if name in _SAE_INNER_HOOKS:
                setattr(self, name, hook)  # the SAE's own hook points, called inside sae.encode/decode
        self.hook_sae_error = HookPoint()  # ours: the error term and output are computed here
        self.hook_sae_output = HookPoint()
        self.use_error_term = bool(use_error_term)
        self.feed_stream = bool(feed_stream)
        self.positions = positions
        self.name = host.name
        self.register_forward_hook(_always_called)

    # The SAE and the replaced hook point ------------------------------------------------------------
    @property
    def sae(self) -> Any:
        """The spliced sae-lens SAE."""
        return self.__dict__["_sae"]

    @property
    def host(self) -> HookPoint:
        """The original hook point at this name, which holds the hooks registered at it."""
        return self.__dict__["_host"]

    # Hook bookkeeping lives on the host, so nothing moves on splice or reset ------------------------
    fwd_hooks = _on_host("fwd_hooks")
    bwd_hooks = _on_host("bwd_hooks")
    ctx = _on_host("ctx")
    hook_conversion = _on_host("hook_conversion")
    backward_scale = _on_host("backward_scale")

    def add_hook(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.host.add_hook(*args, **kwargs)

    def remove_hooks(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.host.remove_hooks(*args, **kwargs)

    def has_hooks(self, *args: Any, **kwargs: Any) -> bool:  # noqa: D102
        return self.host.has_hooks(*args, **kwargs)

    def clear_context(self) -> None:  # noqa: D102
        self.host.clear_context()

    def enable_reshape(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.host.enable_reshape(*args, **kwargs)

    def train(self, mode: bool = True) -> "SplicedSAE":  # hooks may read hook.training (e.g. a gate)
        super().train(mode)
        self.host.train(mode)
        return self

    def __repr__(self) -> str:
        sae, cfg = self.sae, self.sae.cfg
        return (f"SplicedSAE(name={self.name!r}, sae={type(sae).__name__}(d_in={cfg.d_in}, d_sae={cfg.d_sae}), "
                f"use_error_term={self.use_error_term}, feed_stream={self.feed_stream})")

    # Forward -----------------------------------------------------------------------------------------
    def forward(self, x: Float[Tensor, "*activation"]) -> Float[Tensor, "*activation"]:
        """Run the SAE on ``x``; return what flows on (same shape), after the hooks at this name have run."""
        self._check_input(x)
        inner_hooked = any(has_hooks(getattr(self, name)) for name in _SAE_INNER_HOOKS)
        output_hooked = has_hooks(self.hook_sae_output)
        if not (inner_hooked or output_hooked or has_hooks(self.hook_sae_error) or torch.is_grad_enabled()) and (
            self.use_error_term or not self.feed_stream
        ):
            return self.host(x)  # the SAE's result is unobservable and, unedited, would be x: skip it
        # sae-lens hands its input to hook_sae_input as is: a clone keeps in-place edits off the stream.
        recon = self.sae.decode(self.sae.encode(x.clone() if inner_hooked else x)).to(x.dtype)
        if self.use_error_term:
            # Hooks may have edited the reconstruction: the error term needs the clean one.
            clean = self._clean_reconstruction(x) if inner_hooked else recon.detach()
            with torch.no_grad():
                error, error_edited = run_hook(self.hook_sae_error, x - clean)
            # Where no hook changed the path, pass x itself: sae-lens' recon + (x - recon) can differ
            # from x in the last bit. `exact` has x's value ((r - r) is exactly 0) and recon's
            # gradient, as sae-lens' output has (its error term is a constant).
            exact = x.detach() + (recon - recon.detach()) if recon.requires_grad else x
            if error_edited:
                out = recon + error
            elif inner_hooked:  # elementwise: unchanged elements stay x, edited ones get the delta
                out = torch.where(recon == clean, exact, recon + error)
            else:
                out = exact
        else:
            out = recon
        out = self._only_at_positions(out, x)
        if out is x and output_hooked:
            out = x.clone()  # an in-place edit at hook_sae_output must not reach the stream by the back door
        out, _ = run_hook(self.hook_sae_output, out)
        return self.host(out if self.feed_stream else x)

    def _only_at_positions(self, out: Tensor, x: Tensor) -> Tensor:
        if self.positions is None:
            return out
        pos_dim, chosen = self.positions
        keep = torch.zeros(x.shape[pos_dim], dtype=torch.bool, device=x.device)
        keep[chosen] = True
        return torch.where(keep.view(-1, *([1] * (-pos_dim - 1))), out, x)

    @torch.no_grad()
    def _clean_reconstruction(self, x: Tensor) -> Tensor:
        """The SAE's reconstruction of ``x`` with its hooks bypassed (what sae-lens' error term uses)."""
        sae = self.sae
        saved = {name: getattr(sae, name) for name in sae.hook_dict}
        try:
            for name in saved:
                setattr(sae, name, nn.Identity())
            return sae.decode(sae.encode(x)).to(x.dtype)
        finally:
            for name, hook in saved.items():
                setattr(sae, name, hook)

    def _check_input(self, x: Tensor) -> None:
        cfg = self.sae.cfg
        hook_z = getattr(cfg, "reshape_activations", "none") == "hook_z"
        width = x.shape[-2] * x.shape[-1] if hook_z and x.ndim >= 2 else x.shape[-1]
        if width != cfg.d_in:
            raise ConfigError(
                f"SAE spliced at {self.name!r} has d_in={cfg.d_in} but the activation there has width {width} "
                f"(shape {list(x.shape)}); splice an SAE trained on this hook"
            )
        device = self.sae.W_dec.device
        if x.device != device:
            raise ConfigError(
                f"SAE spliced at {self.name!r} is on {device} but the model runs on {x.device}; "
                f"move the SAE with sae.to({str(x.device)!r})"
            )


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = _get_path(root, parent_path) if parent_path else root
    setattr(parent, leaf, module)


def _as_list(saes: Any) -> list:
    if saes is None:
        return []
    if isinstance(saes, (list, tuple)):
        return list(saes)
    return [saes]


class SAEHostMixin:
    """``add_sae``, ``saes()``, ``run_with_saes``, ... for `HookedViT` (sae-lens' ``HookedSAETransformer`` API).

    The spliced SAEs are read off the module tree (``acts_to_saes``), so there is no state to get
    out of sync. Adding an SAE where one is already spliced **replaces** it (as sae-lens does).
    """

    # Methods of HookedViT / HookedRootModule this mixin relies on.
    cfg: Any
    hook_dict: dict[str, HookPoint]
    setup: Any
    check_hook_name: Any
    pos_dim: Any
    run_with_cache: Any
    run_with_hooks: Any

    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """Hook name → the SAE spliced there."""
        return {name: hook.sae for name, hook in self.hook_dict.items() if isinstance(hook, SplicedSAE)}

    def spliced(self, hook_name: str) -> SplicedSAE:
        """The `SplicedSAE` module at ``hook_name`` (to read or flip ``use_error_term``/``feed_stream``)."""
        module = self.hook_dict.get(hook_name)
        if not isinstance(module, SplicedSAE):
            raise ConfigError(f"no SAE is spliced at {hook_name!r}; spliced: {sorted(self.acts_to_saes) or 'none'}")
        return module

    def add_sae(
        self,
        sae: Any,
        use_error_term: Optional[bool] = None,
        feed_stream: bool = True,
        tokens: Optional[str] = None,
    ) -> None:
        """Splice ``sae`` in at ``sae.cfg.metadata.hook_name`` until `reset_saes` (replacing any SAE there).

        Args:
            sae: A sae-lens SAE with ``cfg.metadata.hook_name`` set to a hook of this model.
            use_error_term: Add the SAE's error so that, with no hook editing the SAE path, what flows
                on is exactly the original activation; None: the SAE's own ``use_error_term`` (as in
                sae-lens; False by default).
            feed_stream: If False, compute the SAE path (its hooks fire; e.g. a gate can read
                ``<hook>.hook_sae_output``) but pass the original activation on, untouched.
            tokens: Positions the SAE output replaces: ``"all"`` (sae-lens), ``"cls"`` (position 0,
                for SAEs trained on class-token rows) or ``"patches"`` (positions after the prefix
                tokens). Other positions flow on unchanged. None: the ``tokens`` recorded in the
                SAE's metadata by `vit_interp.sae.train_sae`, else ``"all"``.
        """
        self._check_sae(sae)
        hook_name = getattr(sae.cfg.metadata, "hook_name", None)
        if not hook_name:
            raise ConfigError(
                "the SAE has no cfg.metadata.hook_name; set sae.cfg.metadata.hook_name to the hook it was "
                "trained on (e.g. 'blocks.1.hook_resid_pre')"
            )
        hook_out = getattr(sae.cfg.metadata, "hook_name_out", None)
        if hook_out and hook_out != hook_name:
            raise ConfigError(f"transcoders (hook_name {hook_name!r} -> hook_name_out {hook_out!r}) are not supported; "
                              "splice an SAE whose input and output hook are the same")
        if _SAE_HOOK_MARK in hook_name:
            raise ConfigError(f"cannot splice an SAE into another SAE's hook {hook_name!r}; use a hook of the model itself")
        self.check_hook_name(hook_name)
        if tokens is None:  # the SAE's own token selection when it was trained by vit-interp, else sae-lens' "all"
            tokens = getattr(sae.cfg.metadata, "tokens", None) or "all"
        if tokens not in SPLICE_TOKENS:
            raise ConfigError(f"unknown token selection {tokens!r}; choose one of {list(SPLICE_TOKENS)}")
        current = self.hook_dict[hook_name]
        host = current.host if isinstance(current, SplicedSAE) else current
        self._check_width(hook_name, sae)
        if use_error_term is None:
            use_error_term = bool(getattr(sae, "use_error_term", False))
        spliced = SplicedSAE(sae, host, use_error_term, feed_stream, self._positions(hook_name, tokens))
        spliced.train(host.training)
        if isinstance(current, SplicedSAE):
            logger.info("replacing the SAE spliced at %s", hook_name)
            self._unsplice(current)
        _set_path(self, hook_name, spliced)  # type: ignore[arg-type]
        self.setup()

    def reset_saes(self, act_names: Union[str, Sequence[str], None] = None) -> None:
        """Remove the SAEs spliced at these hook names (default: all), putting the original hook points back.

        Hooks registered at those names (permanent ones, attached gates) stay; hooks on the SAEs' own
        hook points leave with the SAEs.
        """
        names = list(self.acts_to_saes) if act_names is None else [act_names] if isinstance(act_names, str) else list(act_names)
        for name in names:
            module = self.spliced(name)
            self._unsplice(module)
            _set_path(self, name, module.host)  # type: ignore[arg-type]
        self.setup()

    @contextmanager
    def saes(
        self,
        saes: Any = (),
        reset_saes_end: bool = True,
        use_error_term: Optional[bool] = None,
        feed_stream: bool = True,
        tokens: Optional[str] = None,
    ) -> Iterator[Any]:
        """``with model.saes([sae, ...]):`` splice SAEs inside the block; on exit restore what was spliced before.

        Arguments as in `add_sae`; ``reset_saes_end=False`` leaves the SAEs spliced.
        """
        previous: list[tuple[str, Optional[SplicedSAE]]] = []
        try:
            for sae in _as_list(saes):
                self._check_sae(sae)
                name = getattr(sae.cfg.metadata, "hook_name", None)
                before = self.hook_dict.get(name) if name else None
                self.add_sae(sae, use_error_term=use_error_term, feed_stream=feed_stream, tokens=tokens)
                previous.append((name, before if isinstance(before, SplicedSAE) else None))
            yield self
        finally:
            if reset_saes_end:
                for name, before in reversed(previous):
                    current = self.hook_dict.get(name)
                    if isinstance(current, SplicedSAE):
                        self._unsplice(current)
                        _set_path(self, name, before if before is not None else current.host)  # type: ignore[arg-type]
                        self.setup()

    def run_with_saes(
        self,
        *model_args: Any,
        saes: Any = (),
        reset_saes_end: bool = True,
        use_error_term: Optional[bool] = None,
        feed_stream: bool = True,
        tokens: Optional[str] = None,
        **model_kwargs: Any,
    ) -> Any:
        """One forward pass with ``saes`` spliced (see `add_sae`); previously spliced SAEs are restored after."""
        with self.saes(saes, reset_saes_end, use_error_term, feed_stream, tokens):
            return self(*model_args, **model_kwargs)  # type: ignore[operator]

    def run_with_cache_with_saes(
        self,
        *model_args: Any,
        saes: Any = (),
        reset_saes_end: bool = True,
        use_error_term: Optional[bool] = None,
        feed_stream: bool = True,
        tokens: Optional[str] = None,
        **cache_kwargs: Any,
    ) -> tuple[Any, Any]:
        """`run_with_cache` (all its options) with ``saes`` spliced; the SAEs' hooks are cached too."""
        with self.saes(saes, reset_saes_end, use_error_term, feed_stream, tokens):
            return self.run_with_cache(*model_args, **cache_kwargs)

    def run_with_hooks_with_saes(
        self,
        *model_args: Any,
        saes: Any = (),
        reset_saes_end: bool = True,
        use_error_term: Optional[bool] = None,
        feed_stream: bool = True,
        tokens: Optional[str] = None,
        fwd_hooks: Sequence[Any] = (),
        bwd_hooks: Sequence[Any] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """``run_with_hooks`` with ``saes`` spliced; hooks may target the SAEs' hook points."""
        with self.saes(saes, reset_saes_end, use_error_term, feed_stream, tokens):
            return self.run_with_hooks(*model_args, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks),
                                       reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts, **model_kwargs)

    # Helpers ------------------------------------------------------------------------------------------
    def _sae_pos_dim(self, hook_name: str) -> Optional[int]:
        """Position axis of ``<host>.hook_sae_*``: the host's, one further right where ``hook_z`` is flattened."""
        host_name, _, leaf = hook_name.partition(_SAE_HOOK_MARK)
        host_dim = self.pos_dim(host_name)
        module = self.hook_dict.get(host_name)
        if host_dim is None or leaf in ("error", "output") or not isinstance(module, SplicedSAE):
            return host_dim
        flattened = getattr(module.sae.cfg, "reshape_activations", "none") == "hook_z"
        return host_dim + 1 if flattened else host_dim

    @staticmethod
    def _check_sae(sae: Any) -> None:
        if not all(hasattr(sae, attr) for attr in ("encode", "decode", "cfg", "hook_dict")):
            raise ConfigError(f"expected a sae-lens SAE (with encode, decode, cfg, hook_dict), got {type(sae).__name__}; "
                              "build one with e.g. sae_lens.TopKSAE(sae_lens.TopKSAEConfig(...))")

    def _unsplice(self, module: SplicedSAE) -> None:
        # Give the SAE back its own hook names (setup() renamed them to <hook>.hook_sae_*).
        module.sae.setup()

    def _positions(self, hook_name: str, tokens: str) -> Optional[tuple[int, slice]]:
        if tokens == "all":
            return None
        pos_dim = self.pos_dim(hook_name)
        if pos_dim is None:
            raise ConfigError(f"hook {hook_name!r} has no position axis, so tokens={tokens!r} cannot apply; use tokens='all'")
        cfg = self.cfg
        if tokens == "cls":
            if not cfg.class_token:
                raise ConfigError("tokens='cls' but the model has no class token; use tokens='patches' or 'all'")
            return (pos_dim, slice(0, 1))
        return (pos_dim, slice(cfg.n_prefix_tokens, None))

    def _check_width(self, hook_name: str, sae: Any) -> None:
        """Cheap d_in check from the config; hooks not covered here are checked at the first forward."""
        cfg, d_in = self.cfg, sae.cfg.d_in
        leaf = hook_name.rsplit(".", 1)[-1]
        hook_z = getattr(sae.cfg, "reshape_activations", "none") == "hook_z"
        if hook_z and leaf != "hook_z":
            raise ConfigError(f"reshape_activations='hook_z' only fits attn.hook_z, not {hook_name!r}; "
                              "use reshape_activations='none'")
        widths = {"hook_q": cfg.d_head, "hook_k": cfg.d_head, "hook_v": cfg.d_head,
                  "hook_z": cfg.n_heads * cfg.d_head if hook_z else cfg.d_head, "hook_result": cfg.d_model,
                  "hook_head_mask": cfg.n_heads, "hook_logits": cfg.n_classes, "hook_scale": 1,
                  "hook_attn_scores": cfg.n_ctx, "hook_pattern": cfg.n_ctx}
        if leaf in _D_MODEL_LEAVES:
            width = cfg.d_model
        elif leaf in ("hook_pre", "hook_post") and ".mlp." in f".{hook_name}":
            width = cfg.d_mlp
        else:
            width = widths.get(leaf)
        if width is not None and width != d_in:
            what = "n_heads * d_head (reshape_activations='hook_z')" if hook_z else "width"
            raise ConfigError(f"SAE has d_in={d_in} but hook {hook_name!r} has {what} {width}; "
                              "splice an SAE trained on this hook")
