"""Wall time of a gated block that skips pruned heads, against the dense block, at head usage 1/3, 2/3, 1.

One transformer block of a ViT (ViT-S/16 sizes by default: d_model 384, 6 heads, 197 tokens),
random weights, eval, ``torch.no_grad``. Rows, timed side by side in one run (round-robin):

* ``dense``                         the block with no mask hook (what a model without a gate runs).
* ``masked dense, usage u``         a mask hook zeroing pruned heads' ``z`` (the default gated path).
* ``skipping, one mask, usage u``   ``set_skip_pruned_heads(True)``, every image the same mask.
* ``skipping, mixed masks, usage u`` every image its own random mask with round(u * n_heads) heads kept
  (all such subsets occur: for 6 heads at 1/3, 15 groups), i.e. what a per-image gate produces.

Each is reported for the attention sub-layer alone (what pruning removes) and for the whole block
(the MLP is never pruned, so its cost bounds the saving).

Usage: ``python benchmarks/head_pruning.py [--quick] [--batch 64] [--repeats 7] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
import warnings
from typing import Callable

import torch
from tqdm import tqdm

from vit_interp import HookedViT, ViTConfig

TARGET = 0.6  # skipping attention at usage 1/3 / dense attention


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-model", type=int, default=384, help="width (default: %(default)s, ViT-S)")
    p.add_argument("--heads", type=int, default=6, help="heads (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=196, help="patches per image, CLS added (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64, help="images per forward (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU cores available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 49 patches, 3 repeats, 1 warm-up")
    args = p.parse_args()
    if args.quick:
        args.batch, args.tokens, args.repeats, args.warmup = 8, 49, 3, 1
    return args


def masks_at(usage_heads: int, n_heads: int, batch: int, mixed: bool, generator: torch.Generator) -> torch.Tensor:
    """[batch, n_heads] 0/1 masks keeping ``usage_heads`` heads: one shared subset, or a random one per image."""
    subsets = [s for s in itertools.product([0.0, 1.0], repeat=n_heads) if sum(s) == usage_heads]
    table = torch.tensor(subsets)
    if not mixed:
        return table[0].expand(batch, -1).clone()
    return table[torch.randint(len(table), (batch,), generator=generator)]


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    side = int(round(args.tokens ** 0.5))
    cfg = ViTConfig(n_layers=1, d_model=args.d_model, n_heads=args.heads, image_size=side * 16, patch_size=16,
                    n_classes=10, seed=args.seed, device=args.device)
    model = HookedViT(cfg).eval()
    block = model.blocks[0]
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, cfg.n_ctx, cfg.d_model, generator=generator).to(args.device)
    ln_x = block.ln1(x)

    def run(fn: Callable[[], object], mask: torch.Tensor | None, skip: bool) -> Callable[[], object]:
        def call() -> object:
            block.attn.skip_pruned_heads = skip
            if mask is None:
                return fn()
            with model.hooks(fwd_hooks=[("blocks.0.attn.hook_head_mask", lambda m, hook: m * mask)]):
                return fn()
        return call

    variants: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    max_diff = 0.0
    for kept in (args.heads // 3, 2 * args.heads // 3, args.heads):
        usage = f"{kept}/{args.heads}"
        shared = masks_at(kept, args.heads, args.batch, mixed=False, generator=generator).to(args.device)
        mixed = masks_at(kept, args.heads, args.batch, mixed=True, generator=generator).to(args.device)
        variants[f"masked dense, usage {usage}"] = (run(lambda: block.attn(ln_x), mixed, False), run(lambda: block(x), mixed, False))
        variants[f"skipping, one mask, {usage}"] = (run(lambda: block.attn(ln_x), shared, True), run(lambda: block(x), shared, True))
        variants[f"skipping, mixed, {usage}"] = (run(lambda: block.attn(ln_x), mixed, True), run(lambda: block(x), mixed, True))
        with torch.no_grad():
            dense_out = run(lambda: block(x), mixed, False)()
            skip_out = run(lambda: block(x), mixed, True)()
        max_diff = max(max_diff, (dense_out - skip_out).abs().max().item())
    variants = {"dense": (run(lambda: block.attn(ln_x), None, False), run(lambda: block(x), None, False)), **variants}

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def time_once(fn: Callable[[], object]) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        sync()
        return time.perf_counter() - start

    print(f"block d_model={cfg.d_model} heads={cfg.n_heads} tokens={cfg.n_ctx} batch={args.batch} device={args.device} "
          f"threads={threads} torch={torch.__version__} repeats={args.repeats} warmup={args.warmup}")
    print(f"max |block output diff| skipping vs masked dense (mixed masks): {max_diff:.2e} "
          f"({'ok' if max_diff <= 1e-4 else 'TOO LARGE'})")
    names = list(variants)
    for _ in range(args.warmup):
        for name in names:
            for fn in variants[name]:
                time_once(fn)
    times = {name: ([], []) for name in names}
    for r in tqdm(range(args.repeats), desc="rounds", leave=False):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for part in (0, 1):
                times[name][part].append(time_once(variants[name][part]))
    med = {name: (statistics.median(a), statistics.median(b)) for name, (a, b) in times.items()}
    print(f"\n{'variant':<30}{'attention ms':>13}{'vs dense':>9}{'block ms':>10}{'vs dense':>9}")
    for name in names:
        attn, whole = med[name]
        print(f"{name:<30}{attn * 1e3:>13.2f}{attn / med['dense'][0]:>8.2f}x{whole * 1e3:>10.2f}{whole / med['dense'][1]:>8.2f}x")
    third = args.heads // 3
    for kind in ("one mask", "mixed"):
        ratio = med[f"skipping, {kind}, {third}/{args.heads}"][0] / med["dense"][0]
        print(f"attention, skipping ({kind}) at usage 1/3 / dense = {ratio:.3f}  (target <= {TARGET}: "
              f"{'met' if ratio <= TARGET else 'NOT met'})")
    spread = max(max(ts) / min(ts) for pair in times.values() for ts in pair)
    if spread > 1.5:
        print(f"warning: noisy machine (slowest/fastest run up to {spread:.1f}x); rerun with more --repeats")


if __name__ == "__main__":
    main()
