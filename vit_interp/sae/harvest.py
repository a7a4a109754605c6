"""Activations of a `HookedViT` hook over a dataset, with explicit token selection.

``tokens`` says which positions become SAE training rows: ``"cls"`` (position 0, one row per image),
``"patches"`` (every patch token, prefix tokens excluded) or ``"all"`` (every position).
The forward pass stops at the hooked activation itself (``stop_at_layer``, then an exception raised by the
harvesting hook): nothing after it runs, not even the rest of the hooked block.

`activation_stream` turns the ordered rows into shuffled, fixed-size training batches, epoch after
epoch, with bounded memory; `harvest_to_disk` stores them as safetensors shards (plus a JSON manifest)
that `ActivationShards` streams back shuffled, for datasets whose activations do not fit in RAM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from einops import rearrange
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from vit_interp.data import model_batches
from vit_interp.errors import ConfigError, DataError
from vit_interp.hooked_vit import HookedViT
from vit_interp.io import save_json_atomic, save_tensors_atomic

TOKEN_CHOICES = ("cls", "patches", "all")


def check_tokens(tokens: Any) -> str:
    """``tokens`` if it is one of `TOKEN_CHOICES`, else a one-line `ConfigError`."""
    if tokens not in TOKEN_CHOICES:
        raise ConfigError(f"unknown token selection {tokens!r}; choose one of {list(TOKEN_CHOICES)}")
    return tokens


def n_prefix_tokens(model: HookedViT) -> int:
    """CLS + distillation + register tokens: the positions before the first patch."""
    cfg = model.cfg
    return int(cfg.class_token) + int(cfg.distill_token) + cfg.n_register_tokens


def stop_layer(model: HookedViT, hook_name: str) -> Optional[int]:
    """The ``stop_at_layer`` that still runs ``hook_name`` (None: the whole model must run)."""
    model.check_hook_name(hook_name)
    parts = hook_name.split(".")
    if parts[0] == "blocks":
        return int(parts[1]) + 1
    if parts[0] in ("hook_embed", "hook_pos_embed", "ln_pre"):
        return 0
    return None


def _check_rank(activations: Tensor) -> None:
    if activations.ndim != 3:
        raise ConfigError(f"token selection needs a [batch, pos, d] activation, got shape {tuple(activations.shape)}; "
                          "harvest a residual-stream style hook")


def select_tokens(activations: Float[Tensor, "batch pos d"], tokens: str, n_prefix: int) -> Float[Tensor, "rows d"]:
    """Rows for the SAE: ``cls`` → ``[batch, d]``; ``patches`` / ``all`` → ``[batch * positions, d]``."""
    check_tokens(tokens)
    _check_rank(activations)
    if tokens == "cls":
        if n_prefix == 0:
            raise ConfigError("tokens='cls' but the model has no class token; use tokens='patches' or 'all'")
        return activations[:, 0]
    chosen = activations[:, n_prefix:] if tokens == "patches" else activations
    return rearrange(chosen, "b p d -> (b p) d")


class _StopForward(Exception):
    """Raised by the harvesting hook once it has its activation: ``stop_at_layer`` still runs the whole
    hooked block (e.g. all of block l for ``blocks.l.hook_resid_pre``), this skips it too."""


def iter_activations(
    model: HookedViT,
    hook_name: str,
    images: Float[Tensor, "n channels height width"],
    tokens: str = "cls",
    batch_size: int = 256,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
) -> Iterator[Float[Tensor, "rows d"]]:
    """Yield, in dataset order, the selected rows of ``hook_name`` for each batch of dataset images in [0, 1].

    Rows are on ``device`` (default: the model's). Hooks already on the model (a gate, an SAE) stay
    active, so what is harvested is what the hook sees in use.
    """
    check_tokens(tokens)
    model.check_hook_name(hook_name)
    stop = stop_layer(model, hook_name)
    n_prefix = n_prefix_tokens(model)
    model_device = model.embed.W_E.device
    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> None:
        captured.append(activation)
        raise _StopForward  # the rest of the forward pass is not needed

    for batch in model_batches(images, model.cfg, model_device, batch_size, f"harvest {hook_name}", progress):
        # no_grad around the forward only: as a decorator it would not reach the body of a generator
        # that another decorator (e.g. a runtime type checker) wraps, and around the yield it would
        # switch gradients off in the caller's code too.
        with torch.no_grad(), contextlib.suppress(_StopForward):
            model.run_with_hooks(batch, fwd_hooks=[(hook_name, grab)], stop_at_layer=stop)
        activation = captured.pop()
        _check_rank(activation)  # before select_tokens, whose shape annotation would fail less clearly
        rows = select_tokens(activation, tokens, n_prefix)
        yield rows.to(device) if device is not None else rows


def rows_per_image(model: HookedViT, tokens: str) -> int:
    """How many SAE rows one image gives: 1 for ``cls``, the patch count for ``patches``, ``n_ctx`` for ``all``."""
    check_tokens(tokens)
    return {"cls": 1, "patches": model.cfg.n_patches, "all": model.cfg.n_ctx}[tokens]


@torch.no_grad()
def hook_width(model: HookedViT, hook_name: str, tokens: str = "cls") -> int:
    """Width ``d`` of the rows `iter_activations` yields for ``hook_name`` (one zero image is run)."""
    cfg = model.cfg
    probe = torch.zeros(1, cfg.in_channels, *cfg.image_size, dtype=cfg.dtype)
    return next(iter_activations(model, hook_name, probe, tokens, batch_size=1, progress=False)).shape[-1]


def shuffled_blocks(
    chunks_for_epoch: Callable[[int], Iterable[Tensor]],
    buffer_rows: int,
    generator: torch.Generator,
    epochs: Optional[int] = None,
) -> Iterator[Float[Tensor, "block d"]]:
    """Shuffled blocks of rows: chunks gather until ``buffer_rows`` (or the epoch ends), then one permutation.

    Memory is bounded by about twice ``buffer_rows`` plus one chunk, whatever the dataset size. A
    block never spans two epochs, so the rows of epoch ``e`` are exactly rows ``[e*n, (e+1)*n)`` of
    the stream.
    """

    def shuffled(pending: list[Tensor]) -> Tensor:
        block = torch.cat(pending)
        pending.clear()  # the chunks are garbage now: free them before the permuted copy exists
        return block[torch.randperm(len(block), generator=generator).to(block.device)]

    epoch = 0
    while epochs is None or epoch < epochs:
        pending: list[Tensor] = []
        n_pending = n_epoch = 0
        for chunk in chunks_for_epoch(epoch):
            pending.append(chunk)
            n_pending += len(chunk)
            n_epoch += len(chunk)
            if n_pending >= buffer_rows:
                n_pending = 0
                yield shuffled(pending)
        if pending:
            yield shuffled(pending)
        if n_epoch == 0:  # an endless loop otherwise
            raise DataError("the activation source is empty; pass at least one image (or a non-empty shard folder)")
        epoch += 1


def rebatch(blocks: Iterable[Tensor], batch_size: int) -> Iterator[Float[Tensor, "batch d"]]:
    """Consecutive rows of ``blocks`` cut into ``[batch_size, d]`` batches (a last partial batch is dropped).

    Every batch has exactly ``batch_size`` rows: sae-lens' trainer counts samples by its configured
    batch size, not the real one, so a short batch would skew its learning-rate schedule and L0.
    Batches are copies, not views, so a batch the consumer still holds never keeps a whole block alive.
    """
    carry: Optional[Tensor] = None
    for block in blocks:
        start = 0
        if carry is not None:
            need = batch_size - len(carry)
            if len(block) < need:
                carry = torch.cat([carry, block])
                continue
            yield torch.cat([carry, block[:need]])
            carry, start = None, need
        while start + batch_size <= len(block):
            yield block[start: start + batch_size].clone()
            start += batch_size
        carry = block[start:].clone() if start < len(block) else None
        del block  # not alive while the next block is gathered


def activation_stream(
    model: HookedViT,
    hook_name: str,
    images: Any,
    tokens: str = "cls",
    batch_size: int = 1024,
    seed: int = 0,
    epochs: Optional[int] = None,
    buffer_rows: Optional[int] = None,
    harvest_batch_size: int = 256,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
) -> Iterator[Float[Tensor, "batch d"]]:
    """Shuffled ``[batch_size, d]`` training batches of ``hook_name``, harvested live, epoch after epoch.

    Each epoch visits the images in a fresh seeded order and passes every selected row exactly once;
    rows are mixed in a bounded buffer of ``buffer_rows`` (default: 16 batches), which matters for
    ``patches``/``all``, where one image gives many correlated rows. Infinite unless ``epochs`` is set.

    Why not ``sae_lens.training.mixing_buffer``: it shuffles with the global RNG and carries half its
    buffer into later batches, so it can neither be seeded nor guarantee one pass per epoch.

    Args:
        model: The model; hooks already on it stay active.
        hook_name: A ``[batch, pos, d]`` hook, e.g. ``blocks.5.hook_resid_pre``.
        images: Dataset images ``[n, channels, height, width]`` in [0, 1] (or an `ImageDataset`).
        tokens: ``cls``, ``patches`` or ``all`` (see `select_tokens`).
        batch_size: Rows per yielded batch.
        seed: Seeds the image order and the buffer shuffles (same seed, same stream).
        epochs: Stop after this many passes (None: never stop).
        buffer_rows: Rows mixed together before batches are cut.
        harvest_batch_size: Images per forward pass.
        device: Where the batches live (default: the model's device).
        progress: Show a progress bar per epoch.
    """
    images = _as_images(images)
    check_tokens(tokens)
    model.check_hook_name(hook_name)
    if batch_size <= 0 or harvest_batch_size <= 0:
        raise ConfigError(f"batch_size ({batch_size}) and harvest_batch_size ({harvest_batch_size}) must be positive")
    generator = torch.Generator().manual_seed(seed)

    def chunks(epoch: int) -> Iterator[Tensor]:
        order = torch.randperm(len(images), generator=generator)
        for start in tqdm(range(0, len(images), harvest_batch_size), desc=f"harvest epoch {epoch}",
                          disable=not progress, leave=False):
            index = order[start: start + harvest_batch_size]
            yield from iter_activations(model, hook_name, images[index], tokens, len(index), device, progress=False)

    return rebatch(shuffled_blocks(chunks, buffer_rows or 16 * batch_size, generator, epochs), batch_size)


def memory_stream(rows: Float[Tensor, "n d"], batch_size: int, seed: int = 0, epochs: Optional[int] = None
                  ) -> Iterator[Float[Tensor, "batch d"]]:
    """Shuffled ``[batch_size, d]`` batches of rows already in memory, a fresh seeded order each epoch.

    When every row fits in memory (e.g. one CLS row per image), harvesting once and reusing the rows
    is far cheaper than `activation_stream`'s forward passes every epoch; the stream is otherwise the
    same (every row once per epoch, full batches only).
    """
    if batch_size <= 0 or len(rows) == 0:
        raise ConfigError(f"memory_stream needs rows and a positive batch_size, got {len(rows)} rows, batch {batch_size}")
    generator = torch.Generator().manual_seed(seed)

    def epochs_of_rows() -> Iterator[Tensor]:
        epoch = 0
        while epochs is None or epoch < epochs:
            yield rows[torch.randperm(len(rows), generator=generator)]
            epoch += 1

    return rebatch(epochs_of_rows(), batch_size)


def _as_images(images: Any) -> Tensor:
    from vit_interp.data import ImageDataset

    if isinstance(images, ImageDataset):
        return images.images
    if not isinstance(images, Tensor) or images.ndim != 4:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise DataError(f"expected images [n, channels, height, width] or an ImageDataset, got {got}")
    return images


# Disk cache ---------------------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
SHARD_FORMAT = "vit-interp activation shards"
SHARD_DTYPES = ("float16", "float32")


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def model_fingerprint(model: HookedViT) -> dict[str, Any]:
    """SHA-256 of the model's config (device and init seed left out) and of its weights.

    Stored in shard manifests and SAE metadata so activations are never silently reused with
    another model.
    """
    config = model.cfg.to_dict() | {"device": None, "seed": None}
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": weights.hexdigest(),
    }


@torch.no_grad()
def harvest_to_disk(
    model: HookedViT,
    hook_name: str,
    images: Any,
    tokens: str,
    out_dir: Union[str, "os.PathLike[str]"],
    dtype: str = "float16",
    shard_rows: int = 65536,
    batch_size: int = 256,
    progress: bool = True,
) -> "ActivationShards":
    """Harvest ``hook_name`` rows for every image, in dataset order, into safetensors shards on disk.

    Memory holds one shard at a time. Each shard is written atomically, and the manifest
    (``manifest.json``: hook, tokens, rows, d, dtype, shards, model fingerprint) last, so a crashed
    run never leaves a folder that reads as complete. Re-harvesting into the same folder replaces it.

    Args:
        model: The model (hooks already on it stay active).
        hook_name: A ``[batch, pos, d]`` hook.
        images: Dataset images ``[n, channels, height, width]`` in [0, 1] (or an `ImageDataset`).
        tokens: ``cls``, ``patches`` or ``all``.
        out_dir: Folder for the shards and the manifest.
        dtype: ``float16`` (half the disk, ~1e-3 relative rounding) or ``float32``.
        shard_rows: Rows per shard (memory while harvesting and reading is about one shard).
        batch_size: Images per forward pass.
        progress: Show a progress bar.

    Returns:
        The shards, opened for reading.
    """
    images = _as_images(images)
    check_tokens(tokens)
    model.check_hook_name(hook_name)
    if dtype not in SHARD_DTYPES:
        raise ConfigError(f"unknown shard dtype {dtype!r}; choose one of {list(SHARD_DTYPES)}")
    if shard_rows <= 0:
        raise ConfigError(f"shard_rows must be positive, got {shard_rows}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # the folder reads as incomplete until the new manifest lands
    torch_dtype = getattr(torch, dtype)
    shards: list[dict[str, Any]] = []
    pending: list[Tensor] = []
    n_pending = d = 0

    def write(rows: Tensor) -> None:
        name = _shard_name(len(shards))
        save_tensors_atomic({"activations": rows.to(torch_dtype)}, out / name)
        shards.append({"file": name, "rows": len(rows)})

    for rows in iter_activations(model, hook_name, images, tokens, batch_size, "cpu", progress):
        d = rows.shape[-1]
        pending.append(rows)
        n_pending += len(rows)
        while n_pending >= shard_rows:
            block = torch.cat(pending)
            write(block[:shard_rows])
            pending, n_pending = ([block[shard_rows:]], n_pending - shard_rows) if n_pending > shard_rows else ([], 0)
    if n_pending:
        write(torch.cat(pending))
    if not shards:
        raise DataError("no images to harvest; pass at least one image")
    kept = {s["file"] for s in shards}
    for stale in out.glob("shard_*.safetensors"):  # left by an earlier, larger harvest
        if stale.name not in kept:
            stale.unlink()
    manifest = {
        "format": SHARD_FORMAT, "version": 1, "hook_name": hook_name, "tokens": tokens,
        "rows": sum(s["rows"] for s in shards), "d": d, "dtype": dtype, "n_images": len(images),
        "rows_per_image": rows_per_image(model, tokens), "model": model_fingerprint(model), "shards": shards,
    }
    save_json_atomic(manifest, out / MANIFEST_FILE)
    return ActivationShards(out)


class ActivationShards:
    """Activations written by `harvest_to_disk`, read back shard by shard (never all at once).

    Example:
        >>> shards = ActivationShards("acts/", model=model, hook_name="blocks.5.hook_resid_pre")
        >>> batches = shards.batches(batch_size=1024, seed=0)   # infinite, shuffled, float32
    """

    def __init__(
        self,
        directory: Union[str, "os.PathLike[str]"],
        model: Optional[HookedViT] = None,
        hook_name: Optional[str] = None,
        tokens: Optional[str] = None,
    ) -> None:
        """Open ``directory`` and, when given, check it was harvested from ``model`` at ``hook_name``/``tokens``."""
        self.directory = Path(directory)
        path = self.directory / MANIFEST_FILE
        if not path.is_file():
            raise DataError(f"{self.directory} has no {MANIFEST_FILE}; harvest into it with harvest_to_disk "
                            "(an interrupted harvest leaves no manifest)")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON ({error.msg}); harvest again") from error
        missing_keys = [k for k in ("hook_name", "tokens", "rows", "d", "dtype", "shards") if k not in self.manifest]
        if self.manifest.get("format") != SHARD_FORMAT or missing_keys:
            raise DataError(f"{path} is not a vit-interp activation manifest (missing {missing_keys}); harvest again")
        missing = [s["file"] for s in self.manifest["shards"] if not (self.directory / s["file"]).is_file()]
        if missing:
            raise DataError(f"{self.directory} lacks shard files {missing[:3]}; harvest again")
        if sum(s["rows"] for s in self.manifest["shards"]) != self.manifest["rows"]:
            raise DataError(f"{path}: shard row counts do not add up to rows={self.manifest['rows']}; harvest again")
        if model is not None or hook_name is not None or tokens is not None:
            self.check(model, hook_name, tokens)

    @property
    def hook_name(self) -> str:
        """The hook the rows come from."""
        return self.manifest["hook_name"]

    @property
    def tokens(self) -> str:
        """The token selection (``cls``, ``patches`` or ``all``)."""
        return self.manifest["tokens"]

    @property
    def rows(self) -> int:
        """Total rows over all shards."""
        return int(self.manifest["rows"])

    @property
    def d(self) -> int:
        """Row width."""
        return int(self.manifest["d"])

    def __len__(self) -> int:
        return self.rows

    def check(self, model: Optional[HookedViT] = None, hook_name: Optional[str] = None, tokens: Optional[str] = None) -> None:
        """Raise a one-line `DataError` if the shards were harvested at another hook, tokens or model."""
        where = self.directory
        if hook_name is not None and hook_name != self.hook_name:
            raise DataError(f"{where} holds {self.hook_name!r} activations, not {hook_name!r}; harvest that hook")
        if tokens is not None and tokens != self.tokens:
            raise DataError(f"{where} holds tokens={self.tokens!r} rows, not {tokens!r}; harvest with tokens={tokens!r}")
        if model is not None:
            stored = self.manifest.get("model", {})
            now = model_fingerprint(model)
            for key, what in (("config_sha256", "another config"), ("weights_sha256", "other weights")):
                if stored.get(key) != now[key]:
                    raise DataError(f"{where} was harvested from a model with {what} ({key} differs); "
                                    "harvest again with this model")

    def chunks(self, order: Optional[Sequence[int]] = None) -> Iterator[Float[Tensor, "rows d"]]:
        """The shards as float32 tensors, in file order or in ``order`` (shard indices)."""
        shards = self.manifest["shards"]
        for index in range(len(shards)) if order is None else order:
            path = self.directory / shards[index]["file"]
            with safe_open(str(path), framework="pt") as handle:  # memory-mapped: only this shard is read
                rows = handle.get_tensor("activations")
            if rows.ndim != 2 or rows.shape != (shards[index]["rows"], self.d):
                raise DataError(f"{path} has shape {list(rows.shape)}, the manifest says "
                                f"[{shards[index]['rows']}, {self.d}]; harvest again")
            yield rows.float()

    def read_all(self) -> Float[Tensor, "rows d"]:
        """Every row, in harvest order, in one float32 tensor (only for data that fits in memory)."""
        return torch.cat(list(self.chunks()))

    def batches(
        self,
        batch_size: int = 1024,
        seed: int = 0,
        epochs: Optional[int] = None,
        buffer_rows: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
    ) -> Iterator[Float[Tensor, "batch d"]]:
        """Shuffled float32 ``[batch_size, d]`` batches, epoch after epoch (like `activation_stream`).

        Shards are visited in a fresh seeded order each epoch and their rows mixed in a buffer of
        ``buffer_rows`` (default: one shard or 16 batches, whichever is larger), so memory stays
        around two shards whatever the total size.
        """
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        largest = max(s["rows"] for s in self.manifest["shards"])

        def chunks(epoch: int) -> Iterator[Tensor]:
            for rows in self.chunks(torch.randperm(n_shards, generator=generator).tolist()):
                yield rows.to(device) if device is not None else rows

        blocks = shuffled_blocks(chunks, buffer_rows or max(largest, 16 * batch_size), generator, epochs)
        return rebatch(blocks, batch_size)
