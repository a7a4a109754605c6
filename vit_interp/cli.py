"""The ``vit-interp`` command."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def _parse_timm_kwargs(pairs: Sequence[str]) -> dict:
    import ast

    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"vit-interp: error: --timm-arg {pair!r} must look like key=value (e.g. depth=2)")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _cmd_hooks(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT

    model = HookedViT.from_timm(args.model, pretrained=args.pretrained, **_parse_timm_kwargs(args.timm_arg))
    if args.attn_result:
        model.set_use_attn_result(True)
    images = torch.zeros(1, model.cfg.in_channels, *model.cfg.image_size)
    with torch.no_grad():
        _, cache = model.run_with_cache(images)
    width = max(len(name) for name in cache.keys())
    for name, tensor in cache.items():
        print(f"{name:<{width}}  {list(tensor.shape)}")
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="fashion-mnist (default), cifar10, cifar100 or folder:PATH")
    parser.add_argument("--data-root", default=None, help="folder holding the dataset files (default: search the usual places)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT
    from vit_interp.data import default_val_size, load_dataset, split_train_val
    from vit_interp.training import TrainConfig, default_model_config, evaluate, model_card, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_dataset(args.dataset, "train-full", root=args.data_root)
    val_size = args.val_size if args.val_size is not None else default_val_size(args.dataset, len(full))
    train, val = split_train_val(full, val_size, seed=args.split_seed)  # the same split as load_dataset's
    if args.limit:
        train, val = train.head(args.limit), val.head(max(1, args.limit // 5))
    if args.model == "default":
        model = HookedViT(default_model_config(train, seed=args.seed))
    elif args.model.startswith("timm:"):
        model = HookedViT.from_timm(args.model.removeprefix("timm:"), pretrained=args.pretrained,
                                    num_classes=train.n_classes, class_names=list(train.class_names),
                                    **_parse_timm_kwargs(args.timm_arg))
    else:
        raise SystemExit(f"vit-interp: error: --model {args.model!r} must be 'default' or 'timm:NAME'")
    model.to(_device(args.device))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay)
    train_classifier(model, train, config, val=val, out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    test = load_dataset(args.dataset, "test", root=args.data_root)
    result = evaluate(model, test, progress=not args.no_progress)
    command = "vit-interp " + " ".join(shlex.quote(a) for a in args.argv)
    card = model_card(model, config, args.out, command, args.dataset, train, val, result,
                      split_seed=args.split_seed, data_root=args.data_root)
    model.save_pretrained(args.out, card=card)
    print(result.to_markdown())
    print(f"saved to {args.out} (test accuracy {result.accuracy:.2%}, 95% CI [{result.ci_low:.2%}, {result.ci_high:.2%}])")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from vit_interp import HookedViT
    from vit_interp.data import load_dataset
    from vit_interp.training import evaluate

    model = HookedViT.from_pretrained(args.model, device=_device(args.device))
    data = load_dataset(args.dataset, args.split, root=args.data_root)
    result = evaluate(model, data, progress=not args.no_progress)
    print(result.to_markdown())
    print(f"accuracy {result.accuracy:.2%} (95% CI [{result.ci_low:.2%}, {result.ci_high:.2%}]) on {len(data)} {args.split} images")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _gate_report(name: str, card: dict, evaluation, controls) -> str:
    """The gate's README/report: how it was made, results per class and head, controls."""
    settings = ", ".join(f"{k}={v}" for k, v in card["settings"].items())
    return "\n".join([
        f"# {name}", "", f"Head gate (`{card['preset']}` preset, layers {evaluation.layers}) for model `{card['model']}` "
        f"on {card['dataset']}; trained on {card['n_train']} training images (validation hold-out excluded), "
        f"evaluated on {card['n_test']} test images. CIs are 95% percentile bootstrap over images.", "",
        "```", card["command"], "```", "", f"Settings: {settings}.", "",
        f"Test accuracy **{evaluation.accuracy:.2%}** [{evaluation.accuracy_ci[0]:.2%}, {evaluation.accuracy_ci[1]:.2%}], "
        f"head usage **{evaluation.usage:.3f}** [{evaluation.usage_ci[0]:.3f}, {evaluation.usage_ci[1]:.3f}].", "",
        "## Per class", "", evaluation.to_markdown(), "", "## Keep rate per (layer, head)", "",
        evaluation.keep_rate_markdown(), "", "![head usage per class](head_usage.png)", "",
        "## Controls on the same test images", "",
        "Random masks keep each head of a gated layer with probability equal to the gate's usage of that layer; "
        "the best fixed subsets have the whole numbers of heads just below and above the gate's usage and are chosen on the validation split.", "",
        controls.to_markdown(), "",
    ])


def _command(args: argparse.Namespace) -> str:
    """The command line as typed, for cards and reports."""
    return "vit-interp " + " ".join(shlex.quote(a) for a in args.argv)


def _model_for(args: argparse.Namespace):
    """Apply --threads, load --model (shipped name or folder) on --device."""
    import torch

    from vit_interp import HookedViT

    if args.threads:
        torch.set_num_threads(args.threads)
    return HookedViT.from_pretrained(args.model, device=_device(args.device))


def _gate_splits(args: argparse.Namespace) -> tuple:
    """Training split (validation hold-out excluded), validation and test; --limit shrinks the first two."""
    from vit_interp.data import load_dataset

    train = load_dataset(args.dataset, "train", root=args.data_root)
    val = load_dataset(args.dataset, "val", root=args.data_root)
    if args.limit:
        train, val = train.head(args.limit), val.head(max(1, args.limit // 5))
    test = load_dataset(args.dataset, "test", root=args.data_root)
    return train, val, test.head(args.test_limit) if args.test_limit else test


def _cmd_train_gate(args: argparse.Namespace) -> int:
    import torch

    from vit_interp.analysis.gating_figures import head_usage_heatmap
    from vit_interp.gating import HeadGate
    from vit_interp.gating.baselines import gate_controls
    from vit_interp.gating.training import GateTrainConfig, train_gate
    from vit_interp.io import save_figure_atomic, save_text_atomic

    config = GateTrainConfig(target_usage=args.target, usage_weight=args.usage_weight, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                             finetune_backbone=args.finetune_backbone, backbone_lr=args.backbone_lr)
    torch.manual_seed(args.seed)  # the decision networks' initialisation (seeded before loading, as always)
    model = _model_for(args)
    train, val, test = _gate_splits(args)
    gate = HeadGate.preset(args.preset, model.cfg, tau=args.tau)
    history = train_gate(model, gate, train, config, progress=not args.no_progress)
    out = Path(args.out)
    if args.finetune_backbone:
        model.save_pretrained(out / "model")
    controls = gate_controls(model, gate, test, selection=val, seed=args.seed, progress=not args.no_progress)
    evaluation = controls.gate
    card = {"command": _command(args), "kind": "head-gate",
            "model": str(args.model) if not args.finetune_backbone else str(out / "model"), "preset": args.preset,
            "dataset": args.dataset, "n_train": len(train), "n_val": len(val), "n_test": len(test),
            "settings": config.__dict__, "history": history, "test": evaluation.to_dict(), "controls": controls.to_dict()}
    gate.save(out, card=card)
    save_figure_atomic(head_usage_heatmap(evaluation), out / "head_usage.png")
    report = _gate_report(out.name, card, evaluation, controls)
    save_text_atomic(report, out / "report.md")
    save_text_atomic(report, out / "README.md")
    print(controls.to_markdown())
    print(f"saved gate to {out}: test accuracy {evaluation.accuracy:.2%}, head usage {evaluation.usage:.3f}")
    return 0


def _cmd_gate_curve(args: argparse.Namespace) -> int:
    from vit_interp.analysis.gating_figures import usage_curve_figure
    from vit_interp.gating.curve import usage_curve
    from vit_interp.gating.training import GateTrainConfig
    from vit_interp.io import save_figure_atomic, save_json_atomic, save_text_atomic

    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        raise SystemExit(f"vit-interp: error: --targets {args.targets!r} must be comma-separated numbers, e.g. 0.3,0.5,0.7")
    model = _model_for(args)
    train, val, test = _gate_splits(args)
    config = GateTrainConfig(usage_weight=args.usage_weight, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    curve = usage_curve(model, train, test, selection=val, targets=targets, preset=args.preset, config=config,
                        n_random=args.n_random, seed=args.seed, progress=not args.no_progress)
    out = Path(args.out)
    command = _command(args)
    save_text_atomic(curve.to_csv(), out / "curve.csv")
    save_json_atomic({"command": command, "settings": config.__dict__, "points": curve.points}, out / "curve.json")
    save_figure_atomic(usage_curve_figure(curve, f"{args.model}: accuracy vs head usage ({args.preset} gate)"), out / "curve.png")
    save_text_atomic(f"# Accuracy vs head usage\n\n```\n{command}\n```\n\n{curve.to_markdown()}\n\n![curve](curve.png)\n",
                     out / "report.md")
    print(curve.to_markdown())
    print(f"wrote {out / 'curve.png'}, curve.csv, curve.json and report.md")
    return 0


def _cmd_train_sae(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT
    from vit_interp.data import load_dataset
    from vit_interp.io import save_text_atomic
    from vit_interp.gating import HeadGate
    from vit_interp.sae import SAETrainConfig, evaluate_sae, save_sae, train_sae
    from vit_interp.sae.files import metrics_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    model = HookedViT.from_pretrained(args.model, device=_device(args.device))
    hook = args.hook or f"blocks.{model.cfg.n_layers - 1}.hook_resid_pre"  # the paper's: input of the final block
    train = load_dataset(args.dataset, "train", root=args.data_root)  # the validation hold-out stays out
    if args.limit:
        train = train.head(args.limit)
    test = load_dataset(args.dataset, "test", root=args.data_root)
    if args.test_limit:
        test = test.head(args.test_limit)
    config = SAETrainConfig(architecture=args.architecture, d_sae=args.d_sae, expansion_factor=args.expansion, k=args.k,
                            l1_coefficient=args.l1_coefficient, l0_coefficient=args.l0_coefficient, lr=args.lr,
                            epochs=args.epochs if args.samples is None else None, samples=args.samples,
                            batch_size=args.batch_size, normalize_activations=args.normalize, seed=args.seed,
                            device=_device(args.device))
    sae, summary = train_sae(model, hook, train, config, tokens=args.tokens, eval_data=test, progress=not args.no_progress)
    gate = HeadGate.load(args.gate) if args.gate else None
    downstream = evaluate_sae(model, sae, test, tokens=args.tokens, gate=gate, progress=not args.no_progress)
    card = {"command": "vit-interp " + " ".join(shlex.quote(a) for a in args.argv), "seed": args.seed,
            "model": str(args.model), "hook_name": hook, "tokens": args.tokens, "dataset": args.dataset,
            "n_train_images": len(train), "n_test_images": len(test), "settings": config.to_dict(),
            "training": {k: summary[k] for k in ("n_train_rows", "steps", "samples", "train_seconds", "train")},
            "history": summary["history"], "test": summary["held_out"], "gate": args.gate,
            "test_spliced": downstream.to_dict()}
    save_sae(sae, args.out, card=card)
    report = (f"# SAE on {hook} ({args.tokens} tokens) of {args.model}\n\n{config.architecture}, d_sae {sae.cfg.d_sae}, "
              f"{summary['steps']} steps on {summary['n_train_rows']} training rows, seed {args.seed}.\n\n"
              f"Test split:\n\n{metrics_markdown(summary['held_out'])}\n\n"
              f"Spliced into the model without error term (reconstruction replaces the activation at the "
              f"{args.tokens} token(s)){f', gated by {args.gate}' if args.gate else ''}:\n\n{downstream.to_markdown()}\n")
    save_text_atomic(report, Path(args.out, "report.md"))
    print(metrics_markdown(summary["held_out"]))
    print(f"saved SAE to {args.out}: test explained variance {summary['held_out']['explained_variance']:.3f}, "
          f"L0 {summary['held_out']['l0']:.1f}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT
    from vit_interp.attribution import METHODS, head_class_dla, latent_head_attributions, method_agreement
    from vit_interp.data import load_dataset
    from vit_interp.errors import ConfigError
    from vit_interp.gating import HeadGate
    from vit_interp.io import save_figure_atomic, save_json_atomic, save_text_atomic
    from vit_interp.sae import latent_statistics, load_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.top < 1 or args.limit < 0 or args.batch_size < 1:
        raise ConfigError(f"--top ({args.top}) and --batch-size ({args.batch_size}) must be positive and --limit "
                          f"({args.limit}) non-negative")
    model = HookedViT.from_pretrained(args.model, device=_device(args.device))
    gate = HeadGate.load(args.gate)
    sae = load_sae(args.sae, model)
    data = load_dataset(args.dataset, args.split, root=args.data_root)
    if args.limit:
        data = data.head(args.limit)
    methods = list(METHODS) if args.method == "all" else [args.method]
    progress = not args.no_progress
    results = latent_head_attributions(model, sae, gate, data, methods, layer=args.layer, batch_size=args.batch_size,
                                       progress=progress)
    first = next(iter(results.values()))
    stats = latent_statistics(model, sae, data, batch_size=args.batch_size, progress=progress)  # row labels
    tokens = "cls" if model.cfg.class_token else "all"
    with model.saes([sae], use_error_term=True, tokens=tokens):  # exact stream; a gate may read the SAE's output
        dla = head_class_dla(model, data, first.layer, gate=gate, batch_size=args.batch_size, progress=progress)
    agreement = method_agreement(results, top=args.top) if len(results) > 1 else None
    out = Path(args.out)
    command = "vit-interp " + " ".join(shlex.quote(a) for a in args.argv)
    sections = []
    for method, result in results.items():
        save_text_atomic(result.to_csv(), out / f"latent_head_{method}.csv")
        save_figure_atomic(result.heatmap(n=args.top, stats=stats), out / f"latent_head_{method}.png")
        sections += [f"## {method}", "", result.to_markdown(top=5), "", f"![{method}](latent_head_{method}.png)", ""]
    save_text_atomic(dla.to_csv(), out / "head_class_dla.csv")
    save_figure_atomic(dla.heatmap(), out / "head_class_dla.png")
    summary = {"command": command, "model": str(args.model), "gate": str(args.gate), "sae": str(args.sae),
               "hook_name": first.hook_name, "layer": first.layer, "dataset": args.dataset, "split": args.split,
               "n_images": len(data), "top": args.top, "latent_head": {m: r.to_dict(top=args.top) for m, r in results.items()},
               "agreement": agreement.to_dict() if agreement else None, "head_class_dla": dla.to_dict()}
    save_json_atomic(summary, out / "attribution.json")
    report = [f"# Attribution: SAE latents → layer {first.layer} heads → classes", "", "```", command, "```", "",
              f"Model `{args.model}`, gate `{args.gate}`, SAE `{args.sae}` at `{first.hook_name}`, {len(data)} "
              f"{args.split} images of {args.dataset}. Positive latent→head values push the head towards being kept. "
              f"{len(first.never_fired)} of {first.d_sae} latents never fired on these images (zero rows; NaN for "
              "correlation). Full matrices: `latent_head_<method>.csv`; heatmaps show the latents with the largest "
              "|value| on any head, labelled with their top class and selectivity on the same images.", "", *sections]
    if agreement:
        report += ["## Agreement between methods", "", agreement.to_markdown(), ""]
    report += [f"## Head → class direct logit attribution (layer {first.layer}, gated)", "", dla.to_markdown(), "",
               "![head class DLA](head_class_dla.png)", ""]
    save_text_atomic("\n".join(report), out / "report.md")
    print("\n".join(sections[2:3]) if sections else "")
    print(f"wrote {len(results)} latent→head matrices, head→class DLA, heatmaps, attribution.json and report.md to {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT
    from vit_interp.analysis.circuits import CircuitSettings
    from vit_interp.analysis.reproduce import ReproduceSettings, reproduce
    from vit_interp.data import load_dataset
    from vit_interp.gating import HeadGate
    from vit_interp.sae import load_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    model_name, gate_name, sae_name = args.model, args.gate, args.sae
    if args.retrain:  # the three parts from scratch, with the commands that made the shipped ones
        parts = out / "retrained"
        common = ["--dataset", args.dataset, "--seed", str(args.seed)] + (["--data-root", args.data_root] if args.data_root else [])
        common += ["--no-progress"] if args.no_progress else []
        common += ["--limit", str(args.limit)] if args.limit else []
        quick = ["--test-limit", str(args.limit)] if args.limit else []
        main(["train", "--out", str(parts / "model"), "--epochs", str(args.model_epochs)] + common)
        main(["train-gate", str(parts / "model"), "--out", str(parts / "gate"), "--preset", "final", "--target", "0.7",
              "--epochs", str(args.gate_epochs)] + common + quick)
        main(["train-sae", str(parts / "model"), "--out", str(parts / "sae"), "--tokens", "cls", "--d-sae", "192", "--k", "16",
              "--epochs", str(args.sae_epochs), "--gate", str(parts / "gate")] + common + quick)
        model_name, gate_name, sae_name = str(parts / "model"), str(parts / "gate"), str(parts / "sae")
    model = HookedViT.from_pretrained(model_name, device=_device(args.device))
    gate = HeadGate.load(gate_name).to(model.embed.W_E.device)
    sae = load_sae(sae_name, model=model, device=model.embed.W_E.device)
    train = load_dataset(args.dataset, "train", root=args.data_root)
    val = load_dataset(args.dataset, "val", root=args.data_root)
    test = load_dataset(args.dataset, "test", root=args.data_root)
    if args.limit:
        train, val, test = train.head(args.limit), val.head(args.limit), test.head(args.limit)
    alphas = tuple(float(a) for a in args.alphas.split(","))
    settings = ReproduceSettings(circuits=CircuitSettings(alphas=alphas, n_latents=args.n_latents, seed=args.seed))
    summary = reproduce(model, gate, sae, train, val, test, out, settings,
                        names={"model": model_name, "gate": gate_name, "sae": sae_name},
                        command="vit-interp " + " ".join(shlex.quote(a) for a in args.argv), progress=not args.no_progress)
    import json

    table = json.loads((out / "circuits.json").read_text())
    print("| class | alpha | accuracy before -> after | usage before -> after | kept heads |")
    print("|---|---:|---|---|---|")
    for row in table["rows"]:
        kept = "".join(f"h{h}" for h, on in enumerate(row["mode_mask"]) if on) or "none"
        print(f"| {row['name']} | {row['alpha']:g} | {row['baseline_accuracy']['mean']:.1%} -> {row['steered_accuracy']['mean']:.1%} | "
              f"{row['baseline_usage']['mean']:.2f} -> {row['steered_usage']['mean']:.2f} | {kept} ({row['mode_share']:.0%}) |")
    print(f"wrote {out / 'report.md'} ({summary['total_s']} s, peak RSS {summary['peak_rss_gb']} GB)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``vit-interp`` (one sub-command per job)."""
    parser = argparse.ArgumentParser(
        prog="vit-interp",
        description="Mechanistic interpretability for Vision Transformers (hooked ViTs, head gating, SAE steering).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hooks = commands.add_parser(
        "hooks",
        help="list the hook points of a timm ViT converted to HookedViT, with their shapes at batch 1",
        description="Convert a timm Vision Transformer to HookedViT and list every hook name and shape.",
    )
    hooks.add_argument("model", help="timm model name, e.g. vit_small_patch16_224")
    hooks.add_argument("--pretrained", action="store_true", help="load timm's pretrained weights (needs the network)")
    hooks.add_argument("--attn-result", action="store_true", help="also list blocks.{l}.attn.hook_result")
    hooks.add_argument(
        "--timm-arg", action="append", default=[], metavar="KEY=VALUE",
        help="keyword argument for timm.create_model, repeatable (e.g. --timm-arg depth=2)",
    )
    hooks.set_defaults(func=_cmd_hooks)

    train = commands.add_parser(
        "train", help="train a HookedViT classifier (the default architecture or a timm ViT) and write a model card",
        description="Train on the training split (minus a held-out validation set), checkpoint every epoch, "
                    "evaluate on the test split, and save model.safetensors, config.json and card.json into --out.",
    )
    _add_data_args(train)
    train.add_argument("--out", required=True, help="output folder (checkpoints, model, card)")
    train.add_argument("--model", default="default", help="'default' (6 layers, 6 heads, d_model 96) or timm:NAME")
    train.add_argument("--pretrained", action="store_true", help="with timm:NAME, start from timm's pretrained weights (needs the network)")
    train.add_argument("--timm-arg", action="append", default=[], metavar="KEY=VALUE", help="extra timm.create_model argument, repeatable")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.05)
    train.add_argument("--warmup-epochs", type=float, default=2.0)
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and augmentation")
    train.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split")
    train.add_argument("--val-size", type=int, default=None, help="validation hold-out size (default 5000)")
    train.add_argument("--limit", type=int, default=0, help="train on the first N training images only (quick runs)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.safetensors")
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy of a model overall and per class, with bootstrap 95%% CIs",
        description="Evaluate a shipped model (by name) or a saved model folder on a dataset split.",
    )
    evaluate.add_argument("model", help="shipped model name (e.g. fashion-mnist-vit) or a folder from 'vit-interp train'")
    _add_data_args(evaluate)
    evaluate.add_argument("--split", default="test", help="test (default), val, train or train-full")
    evaluate.add_argument("--json", default=None, help="also write the result as JSON to this file")
    evaluate.set_defaults(func=_cmd_evaluate)

    gate = commands.add_parser(
        "train-gate", help="train an AdaViT-style head gate on a frozen model and report accuracy and head usage",
        description="Train the decision networks of a head gate (CE + usage_weight * |usage - target|) on a frozen "
                    "model, evaluate on the test split (per class, with 95%% CIs) and save gate.safetensors, "
                    "gate.json (with the card) and report.md into --out.",
    )
    gate.add_argument("model", help="shipped model name (e.g. fashion-mnist-vit) or a folder from 'vit-interp train'")
    _add_data_args(gate)
    gate.add_argument("--out", required=True, help="output folder for the gate")
    gate.add_argument("--preset", default="final", choices=["final", "adavit"], help="which layers are gated")
    gate.add_argument("--target", type=float, default=0.5, help="target head usage in (0, 1]")
    gate.add_argument("--usage-weight", type=float, default=2.0, help="weight of |usage - target| (AdaViT: 2)")
    gate.add_argument("--tau", type=float, default=5.0, help="Gumbel-sigmoid temperature")
    gate.add_argument("--epochs", type=int, default=3)
    gate.add_argument("--batch-size", type=int, default=256)
    gate.add_argument("--lr", type=float, default=3e-3)
    gate.add_argument("--seed", type=int, default=0)
    gate.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    gate.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images only (quick runs)")
    gate.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    gate.add_argument("--finetune-backbone", action="store_true",
                      help="train the model jointly with the gate (saved to OUT/model); default: frozen backbone")
    gate.add_argument("--backbone-lr", type=float, default=1e-4, help="learning rate of the model when fine-tuning")
    gate.set_defaults(func=_cmd_train_gate)

    curve = commands.add_parser(
        "gate-curve", help="accuracy vs head usage: one gate per target usage, beside random masks and fixed subsets",
        description="Train one gate per target usage on a frozen model and evaluate each on the test split beside "
                    "random masks at the same usage, the best fixed head subset of each size (chosen on the "
                    "validation split), the ceiling and the floor; write curve.csv, curve.json, curve.png, report.md.",
    )
    curve.add_argument("model", help="shipped model name (e.g. fashion-mnist-vit) or a folder from 'vit-interp train'")
    _add_data_args(curve)
    curve.add_argument("--out", required=True, help="output folder")
    curve.add_argument("--targets", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="comma-separated target usages")
    curve.add_argument("--preset", default="final", choices=["final", "adavit"], help="which layers are gated")
    curve.add_argument("--usage-weight", type=float, default=2.0)
    curve.add_argument("--epochs", type=int, default=3)
    curve.add_argument("--batch-size", type=int, default=256)
    curve.add_argument("--lr", type=float, default=3e-3)
    curve.add_argument("--n-random", type=int, default=5, help="random-mask draws per point")
    curve.add_argument("--seed", type=int, default=0)
    curve.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    curve.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images only (quick runs)")
    curve.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    curve.set_defaults(func=_cmd_gate_curve)

    sae = commands.add_parser(
        "train-sae", help="train a sae-lens SAE on a hook of a frozen model and report reconstruction on the test split",
        description="Harvest the activations of one hook (forward passes stop there) on the training split (the "
                    "validation hold-out excluded), train a sae-lens SAE with sae-lens' trainer, measure explained "
                    "variance, MSE, L0 and dead latents on the test split, and save cfg.json + "
                    "sae_weights.safetensors (sae-lens format), card.json, README.md and report.md into --out.",
    )
    sae.add_argument("model", help="shipped model name (e.g. fashion-mnist-vit) or a folder from 'vit-interp train'")
    _add_data_args(sae)
    sae.add_argument("--out", required=True, help="output folder for the SAE")
    sae.add_argument("--hook", default=None, help="hook to train on (default: blocks.{L-1}.hook_resid_pre, the final block's input)")
    sae.add_argument("--tokens", default="cls", choices=["cls", "patches", "all"], help="which positions become rows")
    sae.add_argument("--architecture", default="topk", choices=["topk", "standard", "batchtopk", "jumprelu", "matryoshka"])
    width = sae.add_mutually_exclusive_group()
    width.add_argument("--d-sae", type=int, default=None, help="number of latents")
    width.add_argument("--expansion", type=int, default=8, help="latents per input dimension (default 8)")
    sae.add_argument("--k", type=int, default=16, help="active latents per row (topk, batchtopk, matryoshka)")
    sae.add_argument("--l1-coefficient", type=float, default=1.0, help="sparsity weight of 'standard'")
    sae.add_argument("--l0-coefficient", type=float, default=1.0, help="sparsity weight of 'jumprelu'")
    length = sae.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=10.0, help="passes over the training rows (default 10)")
    length.add_argument("--samples", type=int, default=None, help="training rows in total, instead of --epochs")
    sae.add_argument("--batch-size", type=int, default=1024, help="rows per step")
    sae.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to lr/10)")
    sae.add_argument("--normalize", default="expected_average_only_in", choices=["expected_average_only_in", "none"],
                     help="activation normalisation while training (folded into the weights afterwards)")
    sae.add_argument("--seed", type=int, default=0)
    sae.add_argument("--limit", type=int, default=0, help="train on the first N training images only")
    sae.add_argument("--test-limit", type=int, default=0, help="measure on the first N test images only")
    sae.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    sae.add_argument("--gate", default=None, help="head gate (shipped name or folder) for the gate-agreement metric")
    sae.set_defaults(func=_cmd_train_sae)

    attribute = commands.add_parser(
        "attribute", help="which SAE latents drive a head gate (latent→head) and what the gated heads do for each class",
        description="Attribute the keep decisions of a gated layer to the latents of the SAE the gate reads "
                    "(gradient x activation on the gate logits, latent ablation, correlation; one harvest), and the "
                    "layer's heads to the class logits (direct logit attribution, gated). Writes full CSV matrices, "
                    "PNG heatmaps, attribution.json and report.md into --out.",
    )
    attribute.add_argument("model", help="shipped model name (e.g. fashion-mnist-vit) or a folder from 'vit-interp train'")
    _add_data_args(attribute)
    attribute.add_argument("--gate", required=True, help="head gate: shipped name (e.g. fashion-mnist-vit-gate) or folder")
    attribute.add_argument("--sae", required=True, help="SAE at the gate's read hook: shipped name or sae-lens folder")
    attribute.add_argument("--out", required=True, help="output folder")
    attribute.add_argument("--split", default="val", choices=["val", "test"], help="images to attribute on (default val)")
    attribute.add_argument("--method", default="all", choices=["all", "grad_x_act", "ablation", "correlation"])
    attribute.add_argument("--layer", type=int, default=None, help="gated layer (default: the gate's only layer)")
    attribute.add_argument("--top", type=int, default=20, help="latents per heatmap and per head in the JSON (default 20)")
    attribute.add_argument("--limit", type=int, default=0, help="use the first N images of the split only")
    attribute.add_argument("--batch-size", type=int, default=256)
    attribute.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    attribute.set_defaults(func=_cmd_attribute)
    reproduce = commands.add_parser(
        "reproduce", help="the paper's pipeline on the shipped model, gate and SAE: per-class steering, controls, attribution",
        description="Choose each class's SAE latents on training images, steer them (alpha chosen on validation), report "
                    "per-class accuracy, head usage and kept heads on test beside random-latent, random-mask, "
                    "fixed-subset, floor/ceiling and off-target controls, plus latent->head and head->class attribution; "
                    "writes report.md, CSVs and figures into --out.",
    )
    _add_data_args(reproduce)
    reproduce.add_argument("--out", default="report", help="output folder (default: report/)")
    reproduce.add_argument("--model", default="fashion-mnist-vit", help="shipped model name or folder")
    reproduce.add_argument("--gate", default="fashion-mnist-vit-gate", help="shipped gate name or folder")
    reproduce.add_argument("--sae", default="fashion-mnist-vit-sae", help="shipped SAE name or folder")
    reproduce.add_argument("--retrain", action="store_true", help="train model, gate and SAE from scratch first (slow)")
    reproduce.add_argument("--model-epochs", type=int, default=20, help="with --retrain (default: the shipped model's 20)")
    reproduce.add_argument("--gate-epochs", type=int, default=3, help="with --retrain")
    reproduce.add_argument("--sae-epochs", type=int, default=30, help="with --retrain")
    reproduce.add_argument("--alphas", default="0.25,0.5,2,4,8,16", help="scale factors tried per class")
    reproduce.add_argument("--n-latents", type=int, default=3, help="latents steered per class")
    reproduce.add_argument("--seed", type=int, default=0)
    reproduce.add_argument("--limit", type=int, default=0, help="use only the first N images of each split (quick runs)")
    reproduce.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    reproduce.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vit-interp`` console script."""
    from vit_interp.errors import VitInterpError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except VitInterpError as error:  # a user error: one line, no traceback
        parser.exit(2, f"vit-interp: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
