"""Steering sweep: the sweep engine against the naive path (one steered forward pass per configuration).

Both evaluate the same configurations — per-class steering of each class's top latents at a grid of
scale factors, as `vit-interp reproduce` does — on the same images of the shipped Fashion-MNIST
model, gate and SAE (falls back to random images when the dataset is missing). The naive path runs
``steer(model, gate, sae, spec)`` and a full forward over the images per configuration; the engine
caches the residual stream entering the gated block and the logits under every head mask once, then
answers each configuration with one SAE decode, the decision network and a table lookup. The
results are compared (max |logit difference|, identical masks).

Usage: ``python benchmarks/steering_sweep.py [--quick] [--images 2000] [--alphas 0.5,2,4,8] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from vit_interp import HookedViT
from vit_interp.data import ImageDataset, prepare
from vit_interp.gating import HeadGate
from vit_interp.sae import load_sae
from vit_interp.steering import SteeringSpec, steer
from vit_interp.steering.sweep import SweepEngine

TARGET = 5.0  # naive time / engine time (engine build included)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="images evaluated per configuration (default: %(default)s)")
    p.add_argument("--alphas", default="0.5,2,4,8", help="scale factors per class (default: %(default)s)")
    p.add_argument("--latents", type=int, default=3, help="latents steered per class (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU cores available)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 images, alphas 2,8")
    args = p.parse_args()
    if args.quick:
        args.images, args.alphas = 200, "2,8"
    return args


def load_images(n: int, model: HookedViT) -> ImageDataset:
    try:
        from vit_interp.data import load_dataset

        return load_dataset("fashion-mnist", "val").head(n)
    except Exception:  # no dataset: random images, same shapes (timings do not depend on content)
        generator = torch.Generator().manual_seed(0)
        return ImageDataset(torch.rand(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator),
                            list(model.cfg.class_names), "random", "val")


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    model = HookedViT.from_pretrained("fashion-mnist-vit").eval()
    gate = HeadGate.load("fashion-mnist-vit-gate")
    sae = load_sae("fashion-mnist-vit-sae", model=model)
    data = load_images(args.images, model)
    alphas = [float(a) for a in args.alphas.split(",")]
    # Per class: its images, and latents that fire most on them (a cheap stand-in for the selectivity ranking).
    with torch.no_grad(), model.saes([sae], use_error_term=True, tokens="cls"):
        _, cache = model.run_with_cache(prepare(data.images, model.cfg), names_filter="blocks.5.hook_resid_pre.hook_sae_acts_post")
    acts = cache["blocks.5.hook_resid_pre.hook_sae_acts_post"][:, 0]
    configs = []
    for c in range(len(data.class_names)):
        rows = data.labels == c
        if rows.any():
            latents = acts[rows].mean(0).topk(args.latents).indices.tolist()
            configs += [(SteeringSpec(latents, "scale", a), rows) for a in alphas]
    print(f"{len(configs)} configurations x {len(data)} images ({data.name}), threads={threads}, torch={torch.__version__}")

    start = time.perf_counter()
    naive = []
    images = prepare(data.images, model.cfg)
    with torch.no_grad():
        for spec, rows in configs:
            with steer(model, gate, sae, spec) as steering:
                batches = []
                for i in range(0, len(images), 512):
                    steering.only(rows[i: i + 512])  # steer this class's images only
                    batches.append(model(images[i: i + 512]))
            naive.append(torch.cat(batches))
    naive_s = time.perf_counter() - start

    start = time.perf_counter()
    engine = SweepEngine(model, gate, sae, data, progress=False)
    build_s = time.perf_counter() - start
    results = [engine.run(spec, rows) for spec, rows in configs]
    engine_s = time.perf_counter() - start
    diff = max((r.logits - n).abs().max().item() for r, n in zip(results, naive))

    per_config = (engine_s - build_s) / len(configs)
    print(f"max |logits diff| engine vs naive: {diff:.2e} ({'ok' if diff <= 1e-4 else 'TOO LARGE'})")
    print(f"\n{'path':<34}{'seconds':>10}")
    print(f"{'naive (steer + forward per config)':<34}{naive_s:>10.2f}")
    print(f"{'engine build (prefix + mask table)':<34}{build_s:>10.2f}")
    print(f"{'engine configs':<34}{engine_s - build_s:>10.2f}  ({per_config * 1e3:.1f} ms each)")
    ratio = naive_s / engine_s
    print(f"\nnaive / engine (build included) = {ratio:.2f}  (target >= {TARGET}: {'met' if ratio >= TARGET else 'NOT met'})")
    print(f"naive / engine per configuration, after the build = {naive_s / len(configs) / per_config:.1f}")


if __name__ == "__main__":
    main()
