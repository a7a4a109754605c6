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


def _cmd_train_gate(args: argparse.Namespace) -> int:
    import torch

    from vit_interp import HookedViT
    from vit_interp.data import load_dataset
    from vit_interp.gating import HeadGate
    from vit_interp.gating.evaluation import evaluate_gate
    from vit_interp.gating.training import GateTrainConfig, train_gate

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the decision networks' initialisation
    model = HookedViT.from_pretrained(args.model, device=_device(args.device))
    train = load_dataset(args.dataset, "train", root=args.data_root)
    if args.limit:
        train = train.head(args.limit)
    test = load_dataset(args.dataset, "test", root=args.data_root)
    gate = HeadGate.preset(args.preset, model.cfg, tau=args.tau)
    config = GateTrainConfig(target_usage=args.target, usage_weight=args.usage_weight, epochs=args.epochs,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    history = train_gate(model, gate, train, config, progress=not args.no_progress)
    result = evaluate_gate(model, gate, test, progress=not args.no_progress)
    card = {"command": "vit-interp " + " ".join(shlex.quote(a) for a in args.argv), "model": str(args.model),
            "dataset": args.dataset, "n_train": len(train), "settings": config.__dict__, "history": history,
            "test": result.to_dict()}
    gate.save(args.out, card=card)
    Path(args.out, "report.md").write_text(result.to_markdown() + "\n")
    print(result.to_markdown())
    print(f"saved gate to {args.out}: test accuracy {result.accuracy:.2%}, head usage {result.usage:.3f}")
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
    gate.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    gate.set_defaults(func=_cmd_train_gate)
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
