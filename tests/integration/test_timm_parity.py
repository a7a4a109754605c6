"""HookedViT.from_timm reproduces timm exactly: logits and every residual-stream activation.

Each variant is a real timm architecture with random weights, shrunk through timm kwargs, and its
parameters perturbed (LayerNorm weights away from 1, biases and layer scales away from their init) so
a wrong conversion cannot hide behind a trivial initialisation.
"""

from __future__ import annotations

import pytest
import timm
import torch
from einops import rearrange

from tests.micro import randomize
from vit_interp import HookedViT
from vit_interp.errors import ClassIndexError, UnsupportedModelError

ATOL = 1e-5
SMALL = dict(img_size=16, patch_size=4, depth=2, embed_dim=24, num_heads=3, num_classes=6)

VARIANTS = {
    "cls_token": ("vit_tiny_patch16_224", {}),
    "avg_pool_fc_norm": ("vit_tiny_patch16_224", dict(global_pool="avg")),
    "avg_pool_prenorm_final": ("vit_tiny_patch16_224", dict(global_pool="avg", fc_norm=False)),
    "avg_pool_no_class_token": ("vit_tiny_patch16_224", dict(global_pool="avg", class_token=False)),
    "avg_pool_include_prefix": ("vit_tiny_patch16_224", dict(global_pool="avg", reg_tokens=2, pool_include_prefix=True)),
    "no_qkv_or_proj_bias": ("vit_tiny_patch16_224", dict(qkv_bias=False, proj_bias=False)),
    "distilled_deit": ("deit_tiny_distilled_patch16_224", {}),
    "registers_layer_scale_no_embed_class": (
        "vit_tiny_patch16_224", dict(reg_tokens=4, no_embed_class=True, init_values=0.5)),
    "registers_embed_class": ("vit_tiny_patch16_224", dict(reg_tokens=2)),
    "deit3_layer_scale": ("deit3_small_patch16_224", dict(embed_dim=24, num_heads=3)),
    "clip_style_pre_norm_quick_gelu_grey_nonsquare": (
        "vit_tiny_patch16_224", dict(pre_norm=True, act_layer="quick_gelu", in_chans=1, img_size=(16, 24))),
    "gelu_tanh_patch8_4ch_head_dim": (
        "vit_tiny_patch16_224", dict(act_layer="gelu_tanh", patch_size=8, in_chans=4, img_size=32, mlp_ratio=2.5)),
}


def build(name: str, overrides: dict) -> torch.nn.Module:
    kwargs = {**SMALL, **overrides}
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    return randomize(model, seed=1, scale=0.2)


def timm_activations(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run timm and record, under HookedViT names, what it computes at each hook."""
    acts: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, take_input=False):
        def hook(module, inputs, output=None):
            acts[name] = (inputs[0] if take_input else output).detach().clone()
        return hook

    handles.append(model.norm_pre.register_forward_hook(keep("blocks.0.hook_resid_pre")))
    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(keep(f"blocks.{i}.hook_resid_post")))
        handles.append(block.ls1.register_forward_hook(keep(f"blocks.{i}.hook_attn_out")))
        handles.append(block.norm2.register_forward_pre_hook(keep(f"blocks.{i}.hook_resid_mid", take_input=True)))
        handles.append(block.ls2.register_forward_hook(keep(f"blocks.{i}.hook_mlp_out")))
        handles.append(block.attn.qkv.register_forward_hook(keep(f"blocks.{i}.attn.qkv")))
        handles.append(block.mlp.fc1.register_forward_hook(keep(f"blocks.{i}.mlp.hook_pre")))
        handles.append(block.mlp.act.register_forward_hook(keep(f"blocks.{i}.mlp.hook_post")))
    handles.append(model.head.register_forward_pre_hook(keep("hook_pooled", take_input=True)))
    with torch.no_grad():
        logits = model(images)
    for handle in handles:
        handle.remove()
    for i, block in enumerate(model.blocks):
        if i + 1 < len(model.blocks):
            acts[f"blocks.{i + 1}.hook_resid_pre"] = acts[f"blocks.{i}.hook_resid_post"]
        qkv = rearrange(acts.pop(f"blocks.{i}.attn.qkv"), "b p (three h e) -> three b p h e", three=3, h=block.attn.num_heads)
        for j, name in enumerate("qkv"):
            acts[f"blocks.{i}.attn.hook_{name}"] = qkv[j]
    if type(model).__name__ == "VisionTransformerDistilled":
        acts.pop("hook_pooled")  # timm's head sees only the class token; compare logits instead
    return logits, acts


@pytest.mark.parametrize("fold_ln", [False, True], ids=["plain", "fold_ln"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_every_residual_activation_match_timm(variant: str, fold_ln: bool) -> None:
    name, overrides = VARIANTS[variant]
    reference = build(name, overrides)
    hooked = HookedViT.from_timm(reference, fold_ln=fold_ln)
    cfg = hooked.cfg
    images = torch.randn(3, cfg.in_channels, *cfg.image_size, generator=torch.Generator().manual_seed(2))

    ref_logits, ref_acts = timm_activations(reference, images)
    if fold_ln:
        ref_acts.pop("hook_pooled", None)  # folded: the classifier reads the centred, scaled vector
    with torch.no_grad():
        logits, cache = hooked.run_with_cache(images)

    # The comparison is only meaningful if the reference is far from trivial.
    assert ref_logits.std() > 0.1
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
    residual_names = [n for n in cache.keys() if n.split(".")[-1] in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")]
    assert len(residual_names) == 3 * cfg.n_layers
    assert set(residual_names) <= set(ref_acts)
    for hook_name, expected in ref_acts.items():
        torch.testing.assert_close(cache[hook_name], expected, atol=ATOL, rtol=0, msg=lambda m: f"{hook_name}: {m}")
    # embed + pos_embed (+ ln_pre) is the stream entering block 0
    first = cache["hook_embed"] + cache["hook_pos_embed"]
    if hooked.ln_pre is not None:
        first = hooked.ln_pre(first)
    torch.testing.assert_close(first, ref_acts["blocks.0.hook_resid_pre"], atol=ATOL, rtol=0)
    assert hooked.cfg.normalization_type == ("LNPre" if fold_ln else "LN")


def test_config_read_off_timm() -> None:
    hooked = HookedViT.from_timm(build(*VARIANTS["registers_layer_scale_no_embed_class"]))
    cfg = hooked.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_classes) == (2, 24, 3, 8, 6)
    assert (cfg.n_register_tokens, cfg.pos_embed_prefix, cfg.n_ctx) == (4, False, 1 + 4 + 16)
    assert hooked.W_pos.shape == (16, 24)
    distilled = HookedViT.from_timm(build(*VARIANTS["distilled_deit"])).cfg
    assert (distilled.pool, distilled.n_prefix_tokens) == ("cls_dist", 2)
    grey = HookedViT.from_timm(build(*VARIANTS["clip_style_pre_norm_quick_gelu_grey_nonsquare"])).cfg
    assert (grey.in_channels, grey.image_size, grey.act_fn, grey.ln_pre) == (1, (16, 24), "quick_gelu", True)


def test_imagenet_models_get_class_names() -> None:
    hooked = HookedViT.from_timm("vit_tiny_patch16_224", depth=1, img_size=32, patch_size=16)
    names = hooked.cfg.class_names
    assert len(names) == 1000 and names[1] == "goldfish"
    assert hooked.class_indices("goldfish").item() == 1
    with pytest.raises(ClassIndexError, match="'crane' is ambiguous"):
        hooked.class_indices("crane")
    assert HookedViT.from_timm(build(*VARIANTS["cls_token"])).cfg.class_names is None  # 6 classes: unknown set


def test_from_timm_by_name_passes_kwargs_and_pretrained_flag(monkeypatch) -> None:
    hooked = HookedViT.from_timm("vit_tiny_patch16_224", **SMALL)
    assert (hooked.cfg.n_layers, hooked.cfg.image_size) == (2, (16, 16))
    seen = {}
    real_create = timm.create_model

    def fake_create(name, pretrained=False, **kwargs):  # the network is unavailable: record, build random
        seen.update(name=name, pretrained=pretrained)
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create)
    HookedViT.from_timm("vit_tiny_patch16_224", pretrained=True, **SMALL)
    assert seen == {"name": "vit_tiny_patch16_224", "pretrained": True}


REFUSED = {
    "qk-norm": ("vit_tiny_patch16_224", dict(qk_norm=True)),
    "attention output": ("vit_tiny_patch16_224", dict(scale_attn_norm=True)),
    "inside the MLP": ("vit_tiny_patch16_224", dict(scale_mlp_norm=True)),
    "global_pool='map'": ("vit_tiny_patch16_224", dict(global_pool="map")),
    "global_pool='max'": ("vit_tiny_patch16_224", dict(global_pool="max", class_token=False)),
    "RmsNorm": ("vit_tiny_patch16_224", dict(norm_layer="rmsnorm")),
    "no final norm": ("vit_tiny_patch16_224", dict(final_norm=False)),
    "no classifier": ("vit_tiny_patch16_224", dict(num_classes=0)),
    "position embedding": ("vit_tiny_patch16_224", dict(pos_embed="none")),
    "rotary": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=14)),
    "relative position bias": ("beit_base_patch16_224", dict(img_size=32, patch_size=16, depth=1, embed_dim=24, num_heads=3)),
    "SwiGLU": ("vit_tiny_patch16_224", dict(mlp_layer="swiglu")),
    "hybrid convolutional stem": ("vit_tiny_r_s16_p8_224", dict(img_size=32, depth=1)),
}


@pytest.mark.parametrize("feature", list(REFUSED))
def test_unsupported_timm_features_are_refused_with_their_name(feature: str) -> None:
    name, overrides = REFUSED[feature]
    if overrides.get("mlp_layer") == "swiglu":
        from timm.layers import SwiGLU

        overrides = {**overrides, "mlp_layer": SwiGLU}
    kwargs = {**SMALL, **overrides} if name.startswith("vit_tiny_patch") else {"num_classes": 4, **overrides}
    if name.startswith("eva"):
        kwargs.update(depth=1, embed_dim=24, num_heads=3)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(UnsupportedModelError) as error:
        HookedViT.from_timm(model)
    message = str(error.value)
    assert feature.lower() in message.lower() and "\n" not in message
