"""The ``vit-interp`` command."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


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
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``vit-interp`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
