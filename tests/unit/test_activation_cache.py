"""TransformerLens' ActivationCache analysis methods give exact answers on HookedViT."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.utilities import Slice

from tests.micro import images_for, micro_model

ATOL = 1e-4


def final_resid(cache, model):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]


def test_decompose_resid_sums_to_the_final_residual(model, images) -> None:
    _, cache = model.run_with_cache(images)
    stack, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(stack.sum(0), final_resid(cache, model), atol=ATOL, rtol=0)


@pytest.mark.parametrize("use_attn_result", [False, True])
def test_stack_head_results_sum_to_attention_outputs(model, images, use_attn_result) -> None:
    model.set_use_attn_result(use_attn_result)
    _, cache = model.run_with_cache(images)
    heads, labels = cache.stack_head_results(layer=1, return_labels=True)
    assert labels == ["L0H0", "L0H1", "L0H2", "L0H3"] and heads.shape == (4, 3, 17, 32)
    torch.testing.assert_close(heads.sum(0) + model.b_O[0], cache["blocks.0.hook_attn_out"], atol=ATOL, rtol=0)


def test_full_decomposition_with_accumulated_bias(model, images) -> None:
    _, cache = model.run_with_cache(images)
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    assert labels[-1] == "bias" and labels[0] == "L0H0"
    torch.testing.assert_close(stack.sum(0), final_resid(cache, model), atol=ATOL, rtol=0)
    neurons = cache.get_full_resid_decomposition(expand_neurons=True)
    assert neurons.shape[0] == 2 * 4 + 2 * 48 + 2 + 1
    torch.testing.assert_close(neurons.sum(0), final_resid(cache, model), atol=ATOL, rtol=0)


def test_apply_ln_and_accumulated_resid_match_the_hooked_norms(model, images) -> None:
    _, cache = model.run_with_cache(images)
    stack = cache.decompose_resid()
    scaled = cache.apply_ln_to_stack(stack, layer=-1)
    resid = final_resid(cache, model)
    expected = (resid - resid.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
    torch.testing.assert_close(scaled.sum(0), expected, atol=ATOL, rtol=0)
    accumulated = cache.accumulated_resid(layer=-1, incl_mid=True, apply_ln=True)
    assert accumulated.shape[0] == 2 * 2 + 1
    ln2 = cache.apply_ln_to_stack(cache.decompose_resid(layer=1, mlp_input=True), layer=1, mlp_input=True)
    expected_ln2 = cache["blocks.1.ln2.hook_normalized"]
    w, b = model.blocks[1].ln2.w, model.blocks[1].ln2.b
    torch.testing.assert_close(ln2.sum(0) * w + b, expected_ln2, atol=ATOL, rtol=0)


def logit_check(model, cache, pooled_stack, classes, logits, **kwargs):
    """Per-component logit attributions + the classifier's constant must equal the logits."""
    attrs = cache.logit_attrs(pooled_stack, tokens=classes, **kwargs)
    if model.cfg.pool == "cls_dist":
        attrs = attrs.sum(-1)  # class- and distillation-token contributions
    constant = model.b_U + model.ln_final.b @ model.W_U
    if model.cfg.pool == "cls_dist":
        constant = (constant + model.classifier.b_U_dist + model.ln_final.b @ model.classifier.W_U_dist) / 2
    expected = logits.gather(1, classes[:, None])[:, 0] - constant[classes]
    torch.testing.assert_close(attrs.sum(0), expected, atol=ATOL, rtol=0)
    return attrs


@pytest.mark.parametrize(
    "overrides, pos_slice",
    [
        (dict(), 0),
        (dict(pool="mean", final_norm="post_pool"), None),
        (dict(pool="mean", final_norm="pre_pool", n_register_tokens=2), None),
        (dict(pool="cls_dist", distill_token=True), Slice(slice(0, 2))),
    ],
    ids=["cls", "mean_fc_norm", "mean_prepool_norm", "distilled"],
)
def test_logit_attrs_by_class_index_sum_to_the_logits(overrides, pos_slice) -> None:
    model = micro_model(**overrides)
    images = images_for(model)
    logits, cache = model.run_with_cache(images)
    classes = torch.tensor([0, 3, 4])
    stack = cache.get_full_resid_decomposition(expand_neurons=False)
    kwargs = {} if pos_slice is None else dict(pos_slice=pos_slice)
    if overrides.get("final_norm") == "pre_pool" and overrides.get("pool") == "mean":
        # the norm acts on every token before averaging: attribute per token, then average
        scaled = cache.apply_ln_to_stack(stack, layer=-1)
        attrs = (model.pool_positions(scaled) * model.tokens_to_residual_directions(classes)).sum(-1)
        constant = model.b_U + model.ln_final.b @ model.W_U
        expected = logits.gather(1, classes[:, None])[:, 0] - constant[classes]
        torch.testing.assert_close(attrs.sum(0), expected, atol=ATOL, rtol=0)
        return
    logit_check(model, cache, model.pool_positions(stack), classes, logits, **kwargs)


def test_logit_attrs_accepts_class_names_and_logit_differences() -> None:
    model = micro_model(class_names=["a", "b", "c", "d", "e"])
    images = images_for(model)
    logits, cache = model.run_with_cache(images)
    stack = model.pool_positions(cache.decompose_resid())
    by_name = cache.logit_attrs(stack, tokens="c", pos_slice=0)
    by_index = cache.logit_attrs(stack, tokens=2, pos_slice=0)
    torch.testing.assert_close(by_name, by_index)
    diff = cache.logit_attrs(stack, tokens=torch.tensor([1, 1, 1]), incorrect_tokens=torch.tensor([4, 4, 4]), pos_slice=0)
    bias = (model.b_U + model.ln_final.b @ model.W_U)
    torch.testing.assert_close(diff.sum(0), logits[:, 1] - logits[:, 4] - (bias[1] - bias[4]), atol=ATOL, rtol=0)


def test_folded_model_attributions_are_unchanged() -> None:
    """fold_ln moves LN weights into the classifier; per-component attributions stay the same."""
    from vit_interp import HookedViT
    from vit_interp.weight_processing import fold_layer_norm

    model = micro_model()
    state, cfg = fold_layer_norm(model.state_dict(), model.cfg)
    folded = HookedViT(cfg)
    folded.load_state_dict(state)
    images = images_for(model)
    classes = torch.tensor([1, 2, 0])
    results = []
    for m in (model, folded):
        logits, cache = m.run_with_cache(images)
        stack = m.pool_positions(cache.decompose_resid())
        results.append((logits, cache.logit_attrs(stack, tokens=classes, pos_slice=0)))
    torch.testing.assert_close(results[0][0], results[1][0], atol=ATOL, rtol=0)
    # apply_ln_to_stack centres each component, so centring W_U when folding changes no attribution
    torch.testing.assert_close(results[0][1], results[1][1], atol=ATOL, rtol=0)
