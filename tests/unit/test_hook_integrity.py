"""Every hook point's output is the tensor the forward pass uses: an edit is never silently lost."""

from __future__ import annotations

import pytest
import torch

from tests.micro import images_for, micro_model

CONFIGS = {
    # every optional hook switched on: ln_pre, hook_result, registers
    "cls_all_hooks": dict(ln_pre=True, n_register_tokens=2),
    "mean_pool_post_norm": dict(pool="mean", final_norm="post_pool", class_token=False),
    "distilled": dict(pool="cls_dist", distill_token=True, pos_embed_prefix=False),
    "folded": dict(normalization_type="LNPre"),
}


def build(config: str):
    model = micro_model(**CONFIGS[config])
    if config == "cls_all_hooks":
        model.set_use_attn_result(True)
    return model


def perturb(tensor: torch.Tensor, hook) -> torch.Tensor:
    generator = torch.Generator().manual_seed(hash(hook.name) % 2**31)
    noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
    return tensor + 0.5 * noise * (tensor.abs().mean() + 0.1)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_hook_edit_changes_logits_and_identity_is_exact(config: str) -> None:
    model = build(config)
    images = images_for(model)
    with torch.no_grad():
        clean = model(images)
        fired = set(model.run_with_cache(images)[1].keys())
    assert fired == set(model.hook_dict), "every hook in hook_dict must fire on a full forward pass"
    if config == "cls_all_hooks":
        assert {"ln_pre.hook_scale", "blocks.1.attn.hook_result"} <= fired
    for name in model.hook_dict:
        with torch.no_grad():
            identity = model.run_with_hooks(images, fwd_hooks=[(name, lambda t, hook: t)])
            edited = model.run_with_hooks(images, fwd_hooks=[(name, perturb)])
        assert torch.equal(identity, clean), f"identity hook on {name} changed the logits"
        assert (edited - clean).abs().max() > 1e-4, f"editing {name} did not change the logits"


def test_hook_returning_none_keeps_the_activation(model, images) -> None:
    seen = []
    with torch.no_grad():
        clean = model(images)
        out = model.run_with_hooks(images, fwd_hooks=[("blocks.0.hook_resid_mid", lambda t, hook: seen.append(t.shape))])
    assert torch.equal(out, clean) and seen == [torch.Size([3, 17, 32])]


def test_head_mask_hook_prunes_exactly_that_head(model, images) -> None:
    """Zeroing head h in hook_head_mask equals zeroing its z: the mask reaches W_O and nothing else."""

    def drop_head_1(mask, hook):
        mask = mask.clone()
        mask[:, 1] = 0
        return mask

    def zero_z_1(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with torch.no_grad():
        by_mask = model.run_with_hooks(images, fwd_hooks=[("blocks.1.attn.hook_head_mask", drop_head_1)])
        by_z = model.run_with_hooks(images, fwd_hooks=[("blocks.1.attn.hook_z", zero_z_1)])
    torch.testing.assert_close(by_mask, by_z, atol=1e-6, rtol=0)
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_head_mask", drop_head_1)]):
        _, masked_cache = model.run_with_cache(images)
    assert torch.all(masked_cache["blocks.1.attn.hook_z"][:, :, 1] == 0), "cached z must be the masked z"
    assert torch.all(masked_cache["blocks.1.attn.hook_head_mask"][:, 1] == 0)


@pytest.mark.parametrize("name", ["blocks.1.ln2.hook_scale", "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"])
def test_fused_kernels_never_hide_an_edit(model, images, name) -> None:
    """LayerNorm and attention run fused kernels unless a hook edits the scale/scores/pattern."""

    def edit_in_place(tensor, hook):  # returns None: the edit is only visible through the tensor
        tensor.mul_(1.5)

    def only_read(tensor, hook):
        seen.append(tensor.sum())

    seen = []
    with torch.no_grad():
        clean = model(images)
        assert torch.equal(model.run_with_hooks(images, fwd_hooks=[(name, only_read)]), clean) and seen
        edited = model.run_with_hooks(images, fwd_hooks=[(name, edit_in_place)])
    assert (edited - clean).abs().max() > 1e-4


def test_explicit_and_fused_attention_agree_and_backward_hooks_get_gradients(model, images) -> None:
    _, cache = model.run_with_cache(images)
    pattern = cache["pattern", 0]
    torch.testing.assert_close(pattern, cache["attn_scores", 0].softmax(-1))
    explicit_z = torch.einsum("bhqk,bkhe->bqhe", pattern, cache["v", 0])
    torch.testing.assert_close(cache["z", 0], explicit_z, atol=1e-5, rtol=0)
    grads = {}
    logits = model.run_with_hooks(
        images,
        bwd_hooks=[(n, lambda g, hook: grads.__setitem__(hook.name, g)) for n in
                   ("blocks.1.attn.hook_pattern", "blocks.1.ln1.hook_scale")],
        reset_hooks_end=False,
    )
    logits.sum().backward()
    model.reset_hooks()
    assert grads["blocks.1.attn.hook_pattern"].shape == (3, 4, 17, 17)
    assert grads["blocks.1.ln1.hook_scale"].abs().sum() > 0
