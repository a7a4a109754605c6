"""Cost of the SAE pipeline: harvesting vs a plain forward, SAE training throughput, disk-cache memory.

Measured in one run, on a random-init model shaped like the shipped ``fashion-mnist-vit`` (6 layers,
d_model 96, 28x28 greyscale, patch 4: 49 patches + CLS) and random images:

* harvesting: ``iter_activations`` (hook + token selection + early stop) against a plain
  ``model(images, stop_at_layer=l)``, which returns the same ``blocks.l.hook_resid_pre`` residual,
  round-robin, images/s and their ratio; the full forward is printed for scale.
* SAE training: ``train_sae`` (TopK, sae-lens' trainer) samples/s, fed live (harvest + shuffle buffer)
  and from disk shards (trainer + reader only).
* memory: in a fresh child process per size, ``harvest_to_disk`` then one shuffled epoch of
  ``ActivationShards.batches`` over activations of 2x and 4x ``--ram-budget-mb``; peak RSS growth
  (VmHWM minus the RSS after a warm-up; glibc's mmap threshold fixed at 1 MB so freed blocks are
  returned) is printed beside the data size: bounded means the peak does not follow the data.

Usage: ``python benchmarks/sae_pipeline.py [--quick] [--threads 1] [--ram-budget-mb 128] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vit_interp import HookedViT
from vit_interp.data import model_batches
from vit_interp.sae.harvest import ActivationShards, harvest_to_disk, iter_activations

SHIPPED = "fashion-mnist-vit"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--images", type=int, default=512, help="images for the harvest timing (default: %(default)s)")
    p.add_argument("--batch", type=int, default=256, help="images per forward (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default: %(default)s)")
    p.add_argument("--train-samples", type=int, default=100_000, help="SAE training rows (default: %(default)s)")
    p.add_argument("--ram-budget-mb", type=float, default=128, help="activations written: 2x and 4x this (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU cores available)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and images (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="smoke run: 256 images, 2 repeats, 20k samples, 16 MB budget")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # internal: MB to harvest in a child
    args = p.parse_args()
    if args.quick:
        args.images, args.repeats, args.train_samples, args.ram_budget_mb = 256, 2, 20_000, 16
    return args


def build_model(seed: int, device: str) -> HookedViT:
    """Random weights, the shipped model's architecture (its config is read, its weights are not used)."""
    cfg = HookedViT.from_pretrained(SHIPPED).cfg.replace(seed=seed, device=None)
    return HookedViT(cfg).to(device).eval()


def random_images(model: HookedViT, n: int, seed: int) -> torch.Tensor:
    cfg = model.cfg
    return torch.rand(n, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(seed))


def time_harvest(model: HookedViT, images: torch.Tensor, hook: str, args: argparse.Namespace) -> dict[str, float]:
    layer = int(hook.split(".")[1])  # a blocks.{l}.hook_resid_pre hook: stop_at_layer=l returns exactly its value
    device = model.embed.W_E.device

    def plain(stop_at: int | None) -> None:
        with torch.no_grad():
            for batch in model_batches(images, model.cfg, device, args.batch, progress=False):
                model(batch, stop_at_layer=stop_at)

    variants = {
        "plain forward to the hook": lambda: plain(layer),
        "iter_activations (cls)": lambda: sum(len(r) for r in iter_activations(model, hook, images, "cls", args.batch, progress=False)),
        "iter_activations (patches)": lambda: sum(len(r) for r in iter_activations(model, hook, images, "patches", args.batch, progress=False)),
        "full forward (for scale)": lambda: plain(None),
    }
    names = list(variants)
    for name in names:  # warm-up
        variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(ts) for name, ts in times.items()}


def time_training(model: HookedViT, hook: str, args: argparse.Namespace) -> dict[str, float]:
    from vit_interp.sae import SAETrainConfig, train_sae

    images = random_images(model, 4096, args.seed + 1)
    config = SAETrainConfig(architecture="topk", expansion_factor=8, k=16, batch_size=1024, samples=args.train_samples,
                            seed=args.seed, device=args.device)
    _, live = train_sae(model, hook, images, config, tokens="patches", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        shards = harvest_to_disk(model, hook, images, "patches", tmp, dtype="float32", progress=False)
        _, disk = train_sae(model, hook, shards, config, tokens="patches", progress=False)
    return {"live (harvest + buffer + trainer)": live["samples_per_second"],
            "from disk shards (reader + trainer)": disk["samples_per_second"], "steps": live["steps"]}


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: harvest ``--rss-child`` MB to disk, stream one epoch back, report peak RSS growth.

    The hook is the first block's input (embeddings only), so the run measures the cache, not the model.
    """
    model = build_model(args.seed, "cpu")
    hook = "blocks.0.hook_resid_pre"
    bytes_per_image = model.cfg.n_ctx * model.cfg.d_model * 4  # tokens="all", float32
    n_images = int(float(args.rss_child) * 2**20 / bytes_per_image) + 1
    images = random_images(model, n_images, args.seed)
    shard_rows = 32_768
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: first-call allocations are not the cache's
        harvest_to_disk(model, hook, images[:512], "all", tmp, shard_rows=shard_rows, progress=False)
        for _ in ActivationShards(tmp).batches(batch_size=4096, seed=0, epochs=1):
            pass
    baseline = rss_mb("VmRSS")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        shards = harvest_to_disk(model, hook, images, "all", tmp, dtype="float32", shard_rows=shard_rows, progress=False)
        harvest_s = time.perf_counter() - start
        after_harvest = rss_mb("VmHWM")
        reader = ActivationShards(tmp, model=model, hook_name=hook, tokens="all")
        rows = 0
        start = time.perf_counter()
        for batch in reader.batches(batch_size=4096, seed=0, epochs=1):
            rows += len(batch)
        stream_s = time.perf_counter() - start
        data_mb = sum(f.stat().st_size for f in Path(tmp).glob("shard_*")) / 2**20
    print(json.dumps({
        "data_mb": data_mb, "rows": shards.rows, "rows_streamed": rows, "images_mb": images.numel() * 4 / 2**20,
        "shard_mb": shard_rows * model.cfg.d_model * 4 / 2**20, "baseline_mb": baseline,
        "peak_growth_harvest_mb": after_harvest - baseline, "peak_growth_total_mb": rss_mb("VmHWM") - baseline,
        "harvest_s": harvest_s, "stream_s": stream_s,
    }))


def measure_memory(budget_mb: float, threads: int, seed: int) -> None:
    """Two fresh processes, at 2x and 4x the budget: bounded memory means the peak does not grow with the data."""
    runs = []
    for factor in (2, 4):
        # A fixed mmap threshold makes glibc return freed large blocks to the OS at once; with its default
        # dynamic threshold, freed blocks stay in the heap and the peak would measure fragmentation.
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
        child = subprocess.run([sys.executable, __file__, "--rss-child", str(factor * budget_mb), "--threads", str(threads),
                                "--seed", str(seed)], capture_output=True, text=True, check=True, env=env)
        runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"\ndisk cache (fresh process per size, MALLOC_MMAP_THRESHOLD_=1MB): blocks.0.hook_resid_pre, tokens=all, "
          f"float32, shards of {runs[0]['shard_mb']:.1f} MB, shuffle buffer 65536 rows (24 MB), RAM budget {budget_mb:g} MB")
    print(f"{'activations on disk':<22}{'rows':>10}{'images (input)':>15}{'peak RSS growth':>17}"
          f"{'growth / data':>15}{'harvest s':>11}{'epoch s':>9}")
    for run in runs:
        print(f"{run['data_mb']:>17.1f} MB{run['rows']:>10}{run['images_mb']:>12.1f} MB{run['peak_growth_total_mb']:>14.1f} MB"
              f"{run['peak_growth_total_mb'] / run['data_mb']:>15.2f}{run['harvest_s']:>11.1f}{run['stream_s']:>9.1f}")
    extra_data = runs[1]["data_mb"] - runs[0]["data_mb"]
    extra_peak = runs[1]["peak_growth_total_mb"] - runs[0]["peak_growth_total_mb"]
    # The input images are allocated before the baseline: the growth is the cache's (and allocator noise).
    print(f"doubling the data (+{extra_data:.0f} MB) moved the peak by {extra_peak:+.1f} MB: "
          f"{'bounded' if extra_peak < 0.25 * extra_data else 'NOT bounded'}")


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    if args.rss_child:
        rss_child(args)
        return
    model = build_model(args.seed, args.device)
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"  # the paper's SAE site: input of the final block
    cfg = model.cfg
    print(f"random-init {SHIPPED} architecture: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_ctx} tokens; "
          f"hook {hook}; device={args.device} threads={threads} torch={torch.__version__}")

    speeds = time_harvest(model, random_images(model, args.images, args.seed), hook, args)
    print(f"\nharvesting {args.images} images, batch {args.batch}, median of {args.repeats} rounds")
    print(f"{'variant':<30}{'images/s':>12}{'vs plain':>10}")
    base = speeds["plain forward to the hook"]
    for name, speed in speeds.items():
        print(f"{name:<30}{speed:>12.0f}{base / speed:>9.2f}x")
    print(f"harvest (cls) time / plain forward to the hook = {base / speeds['iter_activations (cls)']:.3f} "
          f"(plain: model(x, stop_at_layer={cfg.n_layers - 1}) returns the same residual)")

    training = time_training(model, hook, args)
    print(f"\nSAE training: topk, d_sae {8 * cfg.d_model}, k 16, batch 1024, {args.train_samples} samples "
          f"({training.pop('steps')} steps), tokens=patches")
    for name, speed in training.items():
        print(f"{name:<40}{speed:>10.0f} samples/s")

    measure_memory(args.ram_budget_mb, threads, args.seed)

if __name__ == "__main__":
    main()
