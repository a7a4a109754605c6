"""HookedViT's TransformerLens interface: hooks, caching, layers, weights, device and seed handling."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import ActivationCache, FactoredMatrix
from transformer_lens.utilities import get_act_name

from tests.micro import images_for, micro_config, micro_model
from vit_interp import HookedViT, ViTConfig


def test_cache_is_a_transformer_lens_activation_cache_with_tl_names(model, images) -> None:
    logits, cache = model.run_with_cache(images)
    assert isinstance(cache, ActivationCache)
    assert logits.shape == (3, 5)
    assert cache["pattern", 1].shape == (3, 4, 17, 17)  # TransformerLens shorthand
    assert cache[get_act_name("scale", 0, "ln2")].shape == (3, 17, 1)
    assert cache["blocks.0.attn.hook_head_mask"].shape == (3, 4)
    assert cache["hook_pooled"].shape == (3, 32)
    torch.testing.assert_close(cache["pattern", 0].sum(-1), torch.ones(3, 4, 17))
    assert torch.equal(cache["hook_logits"], logits)


def test_remove_batch_dim_and_pos_slice_handle_hooks_without_positions(model, images) -> None:
    _, cache = model.run_with_cache(images[:1], remove_batch_dim=True)
    assert cache["hook_pooled"].shape == (32,)
    assert cache["blocks.0.attn.hook_head_mask"].shape == (4,)
    assert cache["blocks.0.hook_resid_pre"].shape == (17, 32)
    _, sliced = model.run_with_cache(images, pos_slice=0)
    assert sliced["blocks.0.hook_resid_pre"].shape == (3, 1, 32)
    assert sliced["blocks.0.attn.hook_q"].shape == (3, 1, 4, 8)
    assert sliced["blocks.0.attn.hook_pattern"].shape == (3, 4, 1, 17)
    assert sliced["hook_pooled"].shape == (3, 32)  # no position axis: untouched (TL 3.9 would slice the batch)
    assert sliced["hook_logits"].shape == (3, 5)
    _, plain = model.run_with_cache(images, names_filter="hook_logits", return_cache_object=False)
    assert isinstance(plain, dict) and list(plain) == ["hook_logits"]


def test_names_filter_forms(model, images) -> None:
    _, by_list = model.run_with_cache(images, names_filter=["hook_embed", "blocks.1.hook_resid_post"])
    _, by_fn = model.run_with_cache(images, names_filter=lambda name: name.endswith("hook_pattern"))
    assert set(by_list.keys()) == {"hook_embed", "blocks.1.hook_resid_post"}
    assert set(by_fn.keys()) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}


def test_hooks_context_permanent_hooks_and_reset(model, images) -> None:
    calls = []
    model.add_perma_hook("blocks.0.hook_resid_pre", lambda t, hook: calls.append("perma"))
    with model.hooks(fwd_hooks=[("hook_pooled", lambda t, hook: calls.append("temp"))]):
        model(images)
    model(images)
    assert calls == ["perma", "temp", "perma"]
    model.reset_hooks(including_permanent=True)
    model(images)
    assert calls == ["perma", "temp", "perma"]


def test_backward_hooks_see_gradients(model, images) -> None:
    grads, kept = {}, {}

    def keep(tensor, hook):
        tensor.retain_grad()
        kept[hook.name] = tensor

    logits = model.run_with_hooks(
        images,
        fwd_hooks=[("blocks.1.hook_resid_mid", keep)],
        bwd_hooks=[("blocks.1.hook_resid_mid", lambda g, hook: grads.__setitem__(hook.name, g.detach()))],
        reset_hooks_end=False,
    )
    logits[:, 2].sum().backward()
    model.reset_hooks()
    assert grads["blocks.1.hook_resid_mid"].abs().sum() > 0
    torch.testing.assert_close(grads["blocks.1.hook_resid_mid"], kept["blocks.1.hook_resid_mid"].grad)
    assert all(not hp.bwd_hooks for hp in model.hook_dict.values())


def test_run_with_cache_incl_bwd_caches_gradients_of_a_metric(model, images) -> None:
    _, cache = model.run_with_cache(images, incl_bwd=True, metric=lambda logits: logits[:, 1].sum(),
                                    names_filter=["blocks.0.hook_resid_post", "hook_pooled"])
    assert set(cache.keys()) == {"blocks.0.hook_resid_post", "hook_pooled", "blocks.0.hook_resid_post_grad", "hook_pooled_grad"}
    torch.testing.assert_close(cache["hook_pooled_grad"], model.W_U[:, 1].expand(3, -1))
    with pytest.raises(ValueError, match="incl_bwd=True needs metric="):
        model.run_with_cache(images, incl_bwd=True)
    assert all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_stop_and_start_at_layer_compose_to_the_full_model(model, images) -> None:
    with torch.no_grad():
        full, cache = model.run_with_cache(images)
        resid = model(images, stop_at_layer=1)
        assert torch.equal(resid, cache["blocks.1.hook_resid_pre"])
        assert torch.equal(model(images, stop_at_layer=0), cache["blocks.0.hook_resid_pre"])
        assert torch.equal(model(images, stop_at_layer=-1), resid)
        assert torch.equal(model(resid, start_at_layer=1), full)
        assert torch.equal(model(images, stop_at_layer=2), cache["blocks.1.hook_resid_post"])


def test_stop_at_layer_runs_no_later_hook(model, images) -> None:
    fired = []
    model.run_with_hooks(images, stop_at_layer=1, fwd_hooks=[(lambda name: True, lambda t, hook: fired.append(hook.name))])
    assert "blocks.0.hook_resid_post" in fired
    assert not any(name.startswith(("blocks.1", "ln_final", "hook_pooled", "hook_logits")) for name in fired)


def test_use_attn_result_toggle_keeps_other_hooks_and_sums_to_attn_out(model, images) -> None:
    calls = []
    model.add_perma_hook("blocks.1.hook_attn_out", lambda t, hook: calls.append(1))
    model.set_use_attn_result(True)
    with torch.no_grad():
        logits_on, cache = model.run_with_cache(images)
    result = cache["blocks.0.attn.hook_result"]
    assert result.shape == (3, 17, 4, 32)
    torch.testing.assert_close(result.sum(-2) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"], atol=1e-5, rtol=0)
    model.set_use_attn_result(False)
    assert "blocks.0.attn.hook_result" not in model.hook_dict
    with torch.no_grad():
        logits_off = model(images)
    torch.testing.assert_close(logits_on, logits_off, atol=1e-5, rtol=0)
    assert len(calls) == 2


def test_weight_accessors_and_factored_matrices(model) -> None:
    cfg = model.cfg
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    assert model.b_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head)
    assert model.W_in.shape == (cfg.n_layers, cfg.d_model, cfg.d_mlp)
    assert model.W_out.shape == (cfg.n_layers, cfg.d_mlp, cfg.d_model)
    assert model.W_U.shape == (cfg.d_model, cfg.n_classes)
    assert model.W_E.shape == (cfg.d_model, 3, 4, 4) and model.W_pos.shape == (17, cfg.d_model)
    ov, qk = model.OV, model.QK
    assert isinstance(ov, FactoredMatrix) and ov.shape == (2, 4, 32, 32)
    torch.testing.assert_close(ov[1, 2].AB, model.W_V[1, 2] @ model.W_O[1, 2])
    torch.testing.assert_close(qk[0, 3].AB, model.W_Q[0, 3] @ model.W_K[0, 3].T)


def test_attention_scores_are_scaled_dot_products(model, images) -> None:
    _, cache = model.run_with_cache(images)
    q, k = cache["q", 0], cache["k", 0]
    expected = torch.einsum("bqhe,bkhe->bhqk", q, k) / model.cfg.d_head**0.5
    torch.testing.assert_close(cache["attn_scores", 0], expected)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = HookedViT(micro_config(seed=7)), HookedViT(micro_config(seed=7))
    assert torch.rand(1) == before  # init used a private generator
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = HookedViT(micro_config(seed=8))
    assert not torch.equal(a.blocks[0].attn.W_Q, c.blocks[0].attn.W_Q)


def test_to_updates_cfg_and_moves_inputs(model, images) -> None:
    model.to(torch.float64)
    assert model.cfg.dtype == torch.float64
    assert model(images.double()).dtype == torch.float64
    model.to("cpu")
    assert model.cfg.device == "cpu"


def test_config_round_trips_through_json() -> None:
    cfg = micro_config(class_names=list("abcde"), image_mean=(0.5, 0.4, 0.3), image_size=(16, 8), dtype="float64")
    again = ViTConfig.from_dict(__import__("json").loads(cfg.to_json()))
    assert again == cfg and again.dtype == torch.float64 and again.image_size == (16, 8)
    assert (cfg.grid_size, cfg.n_patches, cfg.n_ctx) == ((4, 2), 8, 9)


@pytest.mark.parametrize("pool, expected", [("cls", (3, 32)), ("mean", (3, 32)), ("cls_dist", (3, 2, 32))])
def test_pool_positions(pool, expected) -> None:
    overrides = dict(pool=pool)
    if pool == "cls_dist":
        overrides["distill_token"] = True
    model = micro_model(**overrides)
    images = images_for(model)
    _, cache = model.run_with_cache(images)
    assert cache["hook_pooled"].shape == expected
    if pool == "mean":
        resid = cache["ln_final.hook_normalized"]
        torch.testing.assert_close(cache["hook_pooled"], resid[:, 1:].mean(1))
