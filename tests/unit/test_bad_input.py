"""Bad inputs raise one typed, one-line error that names the problem and the fix, and change nothing."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from tests.micro import micro_config
from vit_interp import ViTConfig
from vit_interp.errors import (
    ClassIndexError,
    ConfigError,
    ImageDtypeError,
    ImageInputError,
    UnknownHookError,
    VitInterpError,
)


@contextmanager
def raises(error_type, match: str):
    """pytest.raises that also checks the error is ours and its message a single line."""
    with pytest.raises(error_type, match=match) as info:
        yield info
    assert isinstance(info.value, VitInterpError)
    assert "\n" not in str(info.value), "error messages are one line"


@pytest.mark.parametrize(
    "make_images, error, match",
    [
        (lambda: torch.randn(3, 16, 16), ImageInputError, r"unsqueeze\(0\)"),
        (lambda: torch.randn(1, 2, 3, 16, 16), ImageInputError, "rank 5"),
        (lambda: torch.randn(2, 1, 16, 16), ImageInputError, "1 channels but the model expects 3"),
        (lambda: torch.randn(2, 3, 32, 32), ImageInputError, "image size 32x32 does not match model image_size 16x16"),
        (lambda: torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), ImageDtypeError, "divide uint8 pixels by 255"),
        (lambda: torch.randn(2, 3, 16, 16, dtype=torch.float64), ImageDtypeError, r"images.to\(torch.float32\)"),
        (lambda: [[0.0]], ImageDtypeError, "must be a torch.Tensor"),
    ],
    ids=["single_image", "rank5", "channels", "size", "uint8", "float64", "list"],
)
def test_bad_images(model, make_images, error, match) -> None:
    with raises(error, match):
        model(make_images())


@pytest.mark.parametrize("value, counts", [(float("nan"), "2 NaN and 0 infinite"), (float("inf"), "0 NaN and 2 infinite")])
def test_non_finite_pixels(model, images, value, counts) -> None:
    images = images.clone()
    images[0, 0, 0, :2] = value
    with raises(ImageInputError, counts):
        model(images)


def test_bad_residual_input_for_start_at_layer(model, images) -> None:
    with raises(ImageInputError, "residual stream"):
        model(images, start_at_layer=1)


@pytest.mark.parametrize("layer", [3, -3])
def test_layer_out_of_range(model, images, layer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        model(images, stop_at_layer=layer)


def no_hooks_attached(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_unknown_hook_names_are_refused_before_anything_is_attached(model, images) -> None:
    ok = ("blocks.0.hook_resid_pre", lambda t, hook: t)
    with raises(UnknownHookError, r"did you mean \['blocks.0.hook_resid_pre'"):
        model.run_with_hooks(images, fwd_hooks=[ok, ("blocks.0.hook_resid_pr", lambda t, hook: t)])
    assert no_hooks_attached(model)
    with raises(UnknownHookError, "unknown hook name 'blocks.7.attn.hook_q'"):
        model.run_with_cache(images, names_filter=["blocks.0.attn.hook_q", "blocks.7.attn.hook_q"])
    with raises(UnknownHookError, "unknown hook name 'blocks.0.attn'"):
        model.add_hook("blocks.0.attn", lambda t, hook: t)
    with raises(UnknownHookError, "unknown"):
        with model.hooks(bwd_hooks=[("hook_logit", lambda t, hook: None)]):
            pass
    assert no_hooks_attached(model)


def test_hook_result_when_off_says_how_to_turn_it_on(model, images) -> None:
    with raises(UnknownHookError, r"set_use_attn_result\(True\)"):
        model.run_with_hooks(images, fwd_hooks=[("blocks.0.attn.hook_result", lambda t, hook: t)])


@pytest.mark.parametrize(
    "classes, match",
    [(5, "class index 5 is out of range for a model with 5 classes"), (-1, "class index -1"),
     ([0, 9], "class index 9"), (torch.tensor([0.5]), "must be integers"), ("cat", "has no class_names")],
)
def test_bad_class_indices(model, images, classes, match) -> None:
    _, cache = model.run_with_cache(images)
    stack = model.pool_positions(cache.decompose_resid())
    with raises(ClassIndexError, match):
        cache.logit_attrs(stack, tokens=classes, pos_slice=0)


def test_unknown_class_name_lists_close_names() -> None:
    from vit_interp import HookedViT

    names = ["t-shirt", "trouser", "pullover", "dress", "coat"]
    model = HookedViT(micro_config(class_names=names))
    assert model.class_indices(["coat", "dress"]).tolist() == [4, 3]
    with raises(ClassIndexError, "unknown class name 'trousers'; closest: \\['trouser'"):
        model.tokens_to_residual_directions("trousers")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(image_size=18), "image height 18 is not divisible by patch height 4"),
        (dict(d_model=30, n_heads=4), "d_model 30 is not divisible by n_heads 4"),
        (dict(act_fn="swish"), "act_fn='swish' is not supported"),
        (dict(pool="cls", class_token=False), "pool='cls' needs a class token"),
        (dict(pool="cls_dist"), "needs class and distillation tokens"),
        (dict(class_names=["a", "b"]), "class_names has 2 names but n_classes is 5"),
        (dict(n_layers=0), "n_layers must be a positive int"),
        (dict(dtype="int8"), "not a floating torch dtype"),
        (dict(image_mean=(0.5,)), "image_mean has 1 entries but in_channels is 3"),
    ],
)
def test_bad_config(overrides, match) -> None:
    with raises(ConfigError, match):
        micro_config(**overrides)


def test_config_from_dict_refuses_unknown_fields() -> None:
    data = micro_config().to_dict()
    data["n_layer"] = 3
    with raises(ConfigError, r"unknown ViTConfig fields \['n_layer'\]"):
        ViTConfig.from_dict(data)


def test_from_timm_instance_with_pretrained_flag_is_refused() -> None:
    import timm

    from vit_interp import HookedViT

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=16, patch_size=8)
    with pytest.raises(ValueError, match="only apply when converting by name"):
        HookedViT.from_timm(model, pretrained=True)
