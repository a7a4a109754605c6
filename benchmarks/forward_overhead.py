"""Forward-pass overhead of HookedViT against timm, and of run_with_cache against a plain forward.

Variants, timed side by side in one run (round-robin, so machine noise hits all of them alike):

* ``timm``                  timm ``vit_small_patch16_224`` (pretrained=False, eval, no_grad), fused attention.
* ``timm (fused_attn=False)`` the same weights with explicit attention: the cost HookedViT pays when a
  hook edits the attention scores or pattern (otherwise it uses the fused kernel too).
* ``HookedViT``             ``HookedViT.from_timm`` of that model, no hooks.
* ``HookedViT cache``       ``HookedViT.run_with_cache`` caching every hook.
* two explanatory rows: a no-op hook on every hook point (the fused LayerNorm/attention then also
  materialise scale, scores and pattern for the hooks), and a cache without scores and pattern.

Usage: ``python benchmarks/forward_overhead.py [--quick] [--batch 32] [--repeats 7] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from typing import Callable

import timm
import torch
from tqdm import tqdm

from vit_interp import HookedViT

TARGET_HOOKED = 1.10  # HookedViT forward / timm forward
TARGET_CACHE = 1.6  # run_with_cache / HookedViT forward


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224", help="timm model name (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="images per forward (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per variant (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per variant (default: %(default)s)")
    p.add_argument("--depth", type=int, default=None, help="override the number of blocks (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU cores available)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and images (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="fast smoke run: depth 4, batch 8, repeats 3, warmup 1")
    args = p.parse_args()
    if args.quick:
        args.depth, args.batch, args.repeats, args.warmup = 4, 8, 3, 1
    return args


def build_variants(args: argparse.Namespace) -> tuple[dict[str, Callable[[], object]], float]:
    """The timed callables by name, and max |logits diff| between timm and HookedViT."""
    torch.manual_seed(args.seed)
    extra = {} if args.depth is None else {"depth": args.depth}
    ref = timm.create_model(args.model, pretrained=False, **extra).eval().to(args.device)
    explicit = copy.deepcopy(ref)
    for block in explicit.blocks:
        block.attn.fused_attn = False
    hooked = HookedViT.from_timm(ref, device=args.device).eval()
    images = torch.randn(args.batch, 3, *hooked.cfg.image_size, device=args.device)

    with torch.no_grad():
        diff = (ref(images) - hooked(images)).abs().max().item()

    def cached() -> object:
        logits, cache = hooked.run_with_cache(images)
        return logits, cache  # dropped by the caller after timing, like a user's cache would be

    def no_op(tensor, hook):  # reads nothing: isolates the cost of hooks from the cost of keeping tensors
        return None

    variants = {
        "timm": lambda: ref(images),
        "timm (fused_attn=False)": lambda: explicit(images),
        "HookedViT": lambda: hooked(images),
        "HookedViT run_with_cache": cached,
        # Explanatory rows (no target): every hook attached but nothing kept; and a cache without the
        # two [batch, heads, pos, pos] tensors per layer.
        "  no-op hook everywhere": lambda: hooked.run_with_hooks(images, fwd_hooks=[(lambda name: True, no_op)]),
        "  cache w/o scores,pattern": lambda: hooked.run_with_cache(
            images, names_filter=lambda name: not name.endswith(("hook_attn_scores", "hook_pattern"))),
    }
    return variants, diff


def time_once(fn: Callable[[], object], device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    sync()
    elapsed = time.perf_counter() - start
    del out  # free a cache outside the timed region
    return elapsed


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    variants, diff = build_variants(args)
    depth = args.depth if args.depth is not None else "default"
    print(f"{args.model} depth={depth} batch={args.batch} device={args.device} threads={threads} "
          f"torch={torch.__version__} timm={timm.__version__} repeats={args.repeats} warmup={args.warmup}")
    print(f"max |logits diff| timm vs HookedViT: {diff:.2e} ({'ok' if diff <= 1e-4 else 'TOO LARGE'})")

    names = list(variants)
    for _ in range(args.warmup):
        for name in names:
            time_once(variants[name], args.device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(args.repeats), desc="rounds", leave=False):
        # Rotate the start of each round so no variant always runs first (or right after the cache).
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(time_once(variants[name], args.device))

    med = {name: statistics.median(ts) for name, ts in times.items()}
    base = med["timm"]
    print(f"\n{'variant':<26}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'vs timm':>9}")
    for name in names:
        ts = times[name]
        print(f"{name:<26}{med[name] * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{max(ts) * 1e3:>9.1f}{med[name] / base:>8.2f}x")

    def ratios(stat: dict[str, float]) -> tuple[float, float, float]:
        hooked = stat["HookedViT"]
        return hooked / stat["timm"], stat["HookedViT run_with_cache"] / hooked, hooked / stat["timm (fused_attn=False)"]

    hooked_ratio, cache_ratio, explicit_ratio = ratios(med)
    print()
    print(f"HookedViT / timm              = {hooked_ratio:.3f}  (target <= {TARGET_HOOKED}: "
          f"{'met' if hooked_ratio <= TARGET_HOOKED else 'NOT met'})")
    print(f"run_with_cache / forward      = {cache_ratio:.3f}  (target <= {TARGET_CACHE}: "
          f"{'met' if cache_ratio <= TARGET_CACHE else 'NOT met'})")
    print(f"HookedViT / timm (unfused)    = {explicit_ratio:.3f}  (reference, no target)")
    print("same three ratios from the fastest run of each variant: "
          + ", ".join(f"{r:.3f}" for r in ratios({name: min(ts) for name, ts in times.items()})))
    spread = max(max(ts) / min(ts) for ts in times.values())
    if spread > 1.5:
        print(f"warning: noisy machine (slowest/fastest run up to {spread:.1f}x); "
              "rerun with more --repeats or on an idle machine")

if __name__ == "__main__":
    main()
