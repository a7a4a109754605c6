"""The compute-skipping execution path equals the masked dense path and steps aside when it must."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.micro import images_for, micro_model
from vit_interp.gating import HeadGate


def fixed_masks(batch: int, n_heads: int, seed: int = 0) -> torch.Tensor:
    """Every image a random 0/1 mask: all patterns, incl. all-pruned and all-kept, appear."""
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_heads)))
    pick = torch.randint(len(patterns), (batch,), generator=torch.Generator().manual_seed(seed))
    pick[:2] = torch.tensor([0, len(patterns) - 1])
    return patterns[pick]


@pytest.mark.parametrize("overrides", [{}, {"use_attn_result": True, "n_heads": 2, "d_head": 8}])
def test_skipping_equals_masked_dense_path(overrides) -> None:
    model = micro_model(**overrides)
    images = images_for(model, batch=24)
    masks = fixed_masks(24, model.cfg.n_heads)
    hooks = [(f"blocks.{l}.attn.hook_head_mask", lambda m, hook: m * masks) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        dense = model.run_with_hooks(images, fwd_hooks=hooks)
        model.set_skip_pruned_heads(True)
        skipped = model.run_with_hooks(images, fwd_hooks=hooks)
        model.set_skip_pruned_heads(False)
    assert not torch.equal(dense, model(images).detach()), "the masks must matter for this test to mean anything"
    torch.testing.assert_close(skipped, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grouping", ["by mask", "by head"])
def test_skipping_really_skips_pruned_heads(grouping) -> None:
    """NaN weights in a pruned head cannot reach the output if that head is never computed."""
    model = micro_model()
    images = images_for(model, batch=8)
    if grouping == "by mask":  # one shared mask: one group
        keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    else:  # heads 0 and 2 in all four on/off combinations: more patterns than groups by mask allow
        keep = torch.tensor([[a, 0.0, b, 0.0] for a in (0.0, 1.0) for b in (0.0, 1.0)] * 2)
    hooks = [("blocks.1.attn.hook_head_mask", lambda m, hook: m * keep)]
    with torch.no_grad():
        reference = model.run_with_hooks(images, fwd_hooks=hooks)
        model.blocks[1].attn.W_Q[1] = float("nan")
        model.blocks[1].attn.W_V[3] = float("nan")
        assert torch.isnan(model.run_with_hooks(images, fwd_hooks=hooks)).all(), "dense path multiplies NaN by 0"
        model.set_skip_pruned_heads(True)
        skipped = model.run_with_hooks(images, fwd_hooks=hooks)
    torch.testing.assert_close(skipped, reference, atol=1e-5, rtol=1e-5)


def test_skipping_steps_aside_for_hooks_soft_masks_and_gradients() -> None:
    model = micro_model()
    images = images_for(model, batch=4)
    model.set_skip_pruned_heads(True)
    attn = model.blocks[1].attn
    hard = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).repeat(4, 1)
    assert attn._can_skip(hard)
    assert not attn._can_skip(torch.ones(4, 4)), "nothing pruned: the dense fused path is as fast and exact"
    assert not attn._can_skip(hard * 0.5), "a soft mask rescales heads: dense path"
    assert not attn._can_skip(hard.clone().requires_grad_()), "a gate in training needs the dense product"
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: None)]):
        assert not attn._can_skip(hard), "a hook watching z sees the full tensor"
    # With a cache, the cached z is the masked z (dense path), and logits equal the skipping forward.
    hooks = [("blocks.1.attn.hook_head_mask", lambda m, hook: m * hard)]
    with torch.no_grad():
        fast = model.run_with_hooks(images, fwd_hooks=hooks)
        with model.hooks(fwd_hooks=hooks):
            cached_logits, cache = model.run_with_cache(images)
    assert torch.all(cache["blocks.1.attn.hook_z"][:, :, 1] == 0)
    torch.testing.assert_close(fast, cached_logits, atol=1e-5, rtol=1e-5)


def test_a_gated_model_runs_the_skipping_path_in_eval_and_trains_in_train_mode() -> None:
    model = micro_model(n_layers=3)
    images = images_for(model, batch=16)
    gate = HeadGate.preset("adavit", model.cfg)
    with torch.no_grad():
        for layer in gate.layers:  # biases that prune about half the heads
            gate.decision[str(layer)].bias.copy_(torch.tensor([2.0, -2.0, 0.0, -0.1]))
        with gate.attached(model):
            dense = model(images)
            model.set_skip_pruned_heads(True)
            skipped = model(images)
    assert 0 < float(gate.usage()) < 1
    torch.testing.assert_close(skipped, dense, atol=1e-5, rtol=1e-5)
    model.train()
    gate.generator = torch.Generator().manual_seed(0)
    with gate.attached(model):
        loss = model(images).logsumexp(-1).mean()
    loss.backward()
    assert gate.decision["1"].weight.grad.abs().sum() > 0, "training still gets straight-through gradients"
