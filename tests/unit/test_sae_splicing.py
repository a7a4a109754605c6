"""sae-lens SAEs splice into HookedViT like into HookedSAETransformer, with exact error terms and surviving hooks."""

from __future__ import annotations

import pytest
import sae_lens
import torch
from transformer_lens.hook_points import HookPoint

from tests.micro import micro_model
from vit_interp.components.spliced_sae import SPLICE_TOKENS, SplicedSAE
from vit_interp.errors import ConfigError, UnknownHookError
from vit_interp.gating import HeadGate
from vit_interp.sae.harvest import TOKEN_CHOICES

HOOK = "blocks.1.hook_resid_pre"
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")


def make_sae(kind: str = "topk", hook: str = HOOK, d_in: int = 32, d_sae: int = 64, seed: int = 0, **cfg):
    """A random sae-lens SAE with noisy biases (so reconstructions are far from the input)."""
    torch.manual_seed(seed)
    if kind == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=4, **cfg))
    elif kind == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    else:
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name.startswith("b_"):
                param.copy_(torch.randn_like(param) * 0.1)
            elif name == "threshold":
                param.fill_(0.05)
    sae.cfg.metadata.hook_name = hook
    return sae.eval()


@pytest.fixture
def sae():
    return make_sae()


@pytest.mark.parametrize("kind", ["topk", "standard", "jumprelu"])
def test_error_term_gives_bit_identical_logits_and_without_it_they_differ(model, images, kind) -> None:
    sae = make_sae(kind)
    with torch.no_grad():
        clean = model(images)
        assert torch.equal(model.run_with_saes(images, saes=[sae], use_error_term=True), clean)
        # Also while every SAE hook is read (caching is not editing) and with gradients on.
        out, cache = model.run_with_cache_with_saes(images, saes=sae, use_error_term=True)
        assert torch.equal(out, clean) and f"{HOOK}.hook_sae_error" in cache
        assert not torch.equal(model.run_with_saes(images, saes=[sae]), clean)
    with_grad = model.run_with_saes(images, saes=[sae], use_error_term=True)
    assert torch.equal(with_grad.detach(), clean)
    assert model.acts_to_saes == {}


def test_sae_lens_arithmetic_is_not_exact_which_is_why_x_is_passed_on() -> None:
    generator = torch.Generator().manual_seed(0)
    x, recon = torch.randn(4096, generator=generator), torch.randn(4096, generator=generator) * 3
    assert not torch.equal(recon + (x - recon), x)  # float rounding: sae-lens' output is not always x


def test_hook_names_shapes_and_reset_restores_the_original_hook_point(model, images, sae) -> None:
    names_before, host = list(model.hook_dict), model.hook_dict[HOOK]
    params_before = dict(model.named_parameters())
    with torch.no_grad():
        clean = model(images)
        model.add_sae(sae, use_error_term=True)
        spliced = model.hook_dict[HOOK]
        assert isinstance(spliced, SplicedSAE) and isinstance(spliced, HookPoint) and spliced.host is host
        assert model.acts_to_saes == {HOOK: sae}
        new = [name for name in model.hook_dict if name not in names_before]
        assert new == [f"{HOOK}.{leaf}" for leaf in SAE_HOOKS]
        assert HOOK in model.hook_dict  # the original name stays
        assert dict(model.named_parameters()).keys() == params_before.keys()  # the SAE is not part of the model
        assert not any("hook_sae" in key or "W_enc" in key for key in model.state_dict())
        _, cache = model.run_with_cache(images)
        assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (3, 17, 64)
        assert cache[f"{HOOK}.hook_sae_input"].shape == cache[f"{HOOK}.hook_sae_output"].shape == (3, 17, 32)
        assert torch.equal(cache[f"{HOOK}.hook_sae_output"], cache[HOOK])  # the original name fires on the output
        model.reset_saes()
        assert list(model.hook_dict) == names_before and model.hook_dict[HOOK] is host
        assert model.acts_to_saes == {}
        assert torch.equal(model(images), clean)
        assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # the SAE's own names are given back
    with pytest.raises(ConfigError, match="no SAE is spliced"):
        model.reset_saes(HOOK)


def test_without_error_term_the_output_is_the_reconstruction(model, images, sae) -> None:
    with torch.no_grad():
        _, cache = model.run_with_cache_with_saes(images, saes=[sae])
        x = cache[f"{HOOK}.hook_sae_input"]
        recon = sae.decode(sae.encode(x))
        assert torch.equal(cache[f"{HOOK}.hook_sae_output"], recon)
        assert torch.equal(cache[HOOK], recon)
        assert f"{HOOK}.hook_sae_error" not in cache  # only fires with the error term
        _, clean_cache = model.run_with_cache(images)
        assert torch.equal(x, clean_cache[HOOK])


def test_ablating_a_latent_moves_the_output_by_exactly_the_decoder_delta(model, images, sae) -> None:
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(images)
        x = clean_cache[HOOK]
        acts = sae.encode(x)
        latent = int(acts[:, 0].sum(0).argmax())  # fires on CLS
        assert acts[:, 0, latent].abs().sum() > 0

        def ablate(a, hook):
            a = a.clone()
            a[:, 0, latent] = 0  # only at CLS
            return a

        ablated = acts.clone()
        ablated[:, 0, latent] = 0
        plain = model.run_with_saes(images, saes=[sae])
        with model.saes([sae]):
            out = model.run_with_hooks(images, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)])
        assert not torch.equal(out, plain)
        with model.saes([sae]), model.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)]):
            _, cache = model.run_with_cache(images)
        assert torch.equal(cache[HOOK], sae.decode(ablated))

        # With the error term only the SAE-path delta propagates; untouched positions stay x exactly.
        with model.saes([sae], use_error_term=True), model.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", ablate)]):
            steered, cache = model.run_with_cache(images)
        delta = sae.decode(ablated) - sae.decode(acts)
        torch.testing.assert_close(cache[HOOK] - x, delta, atol=1e-6, rtol=0)
        assert torch.equal(cache[HOOK][:, 1:], x[:, 1:])
        assert not torch.equal(steered, model(images))
        # The error term itself is cached and equals x - (clean reconstruction).
        torch.testing.assert_close(cache[f"{HOOK}.hook_sae_error"], x - sae.decode(acts), atol=0, rtol=0)


def test_run_with_hooks_with_saes_and_an_edited_error_term(model, images, sae) -> None:
    with torch.no_grad():
        clean = model(images)
        zero_error = model.run_with_hooks_with_saes(
            images, saes=[sae], use_error_term=True, fwd_hooks=[(f"{HOOK}.hook_sae_error", lambda e, hook: e * 0)])
        assert torch.equal(zero_error, model.run_with_saes(images, saes=[sae]))  # error removed = no error term
        assert torch.equal(model(images), clean) and model.acts_to_saes == {}


def test_permanent_hook_and_attached_gate_survive_splicing_and_reset(images) -> None:
    model = micro_model()
    sae = make_sae()
    seen = []
    model.add_perma_hook(HOOK, lambda t, hook: seen.append((hook, t.clone())))
    gate = HeadGate.preset("final", model.cfg).attach(model)
    assert gate.read_hooks[1] == HOOK
    host = model.hook_dict[HOOK]
    with torch.no_grad():
        clean = model(images)
        clean_mask = gate.last_masks[1].clone()
        model.add_sae(sae, use_error_term=True)
        assert torch.equal(model(images), clean) and torch.equal(gate.last_masks[1], clean_mask)
        assert len(model.hook_dict[HOOK].fwd_hooks) == 2  # the permanent hook and the gate's reader
        model.reset_hooks()  # non-permanent reset keeps them
        assert torch.equal(model(images), clean)
        model.add_sae(sae, use_error_term=False)  # replaces the spliced SAE
        _, cache = model.run_with_cache(images)
        recon = cache[f"{HOOK}.hook_sae_output"]
        assert torch.equal(seen[-1][1], recon)  # hooks at the name see what the SAE outputs
        assert torch.equal(gate.last_masks[1], gate.decide(1, recon[:, 0]))  # the gate reads the reconstruction
        late = []
        model.add_perma_hook(HOOK, lambda t, hook: late.append(hook))  # added while spliced
        model.reset_saes()
        assert torch.equal(model(images), clean) and torch.equal(gate.last_masks[1], clean_mask)
        assert late == [host], "a permanent hook added while spliced keeps firing after reset"
        late_handle = host.fwd_hooks.pop()
        late_handle.hook.remove()
    assert all(hook is host for hook, _ in seen)  # hook functions always get the original hook point
    assert len(seen) == 5
    with model.saes([sae]):
        gate.detach(model)  # detaching works through the spliced module
        assert len(model.hook_dict[HOOK].fwd_hooks) == 1
    assert len(host.fwd_hooks) == 1 and host.fwd_hooks[0].is_permanent
    with torch.no_grad():
        assert torch.equal(model(images), gate_free := model.run_with_hooks(images)) and len(seen) == 7
    assert not torch.equal(gate_free, clean) or bool(clean_mask.all())


def test_feed_stream_false_keeps_the_stream_and_a_gate_can_read_the_sae_output(model, images, sae) -> None:
    gate = HeadGate(32, 4, [1], read_hooks=[f"{HOOK}.hook_sae_output"])
    with torch.no_grad():
        clean = model(images)
        model.add_sae(sae, feed_stream=False)
        assert not model.hook_dict[HOOK].feed_stream
        out, cache = model.run_with_cache(images)
        assert torch.equal(out, clean) and torch.equal(cache[HOOK], cache[f"{HOOK}.hook_sae_input"])
        recon = cache[f"{HOOK}.hook_sae_output"]
        assert torch.equal(recon, sae.decode(sae.encode(cache[HOOK])))
        with gate.attached(model):
            model(images)
        assert torch.equal(gate.last_masks[1], gate.decide(1, recon[:, 0]))
        model.reset_saes()
        with pytest.raises(UnknownHookError):
            gate.check_compatible(model)  # the SAE's hooks leave with it


def test_tokens_cls_replaces_only_the_class_token(model, images, sae) -> None:
    assert set(SPLICE_TOKENS) == set(TOKEN_CHOICES)
    with torch.no_grad():
        _, clean = model.run_with_cache(images, names_filter=HOOK)
        _, cache = model.run_with_cache_with_saes(images, saes=[sae], tokens="cls")
        x = clean[HOOK]
        assert torch.equal(cache[HOOK][:, 1:], x[:, 1:])
        assert torch.equal(cache[HOOK][:, 0], sae.decode(sae.encode(x))[:, 0])
        assert cache[f"{HOOK}.hook_sae_acts_post"].shape == (3, 17, 64)  # the SAE still sees every position
        _, cache = model.run_with_cache_with_saes(images, saes=[sae], tokens="patches")
        assert torch.equal(cache[HOOK][:, 0], x[:, 0]) and not torch.equal(cache[HOOK][:, 1:], x[:, 1:])


def test_saes_context_restores_a_previously_spliced_sae(model, images) -> None:
    first, second = make_sae(seed=1), make_sae(seed=2)
    model.add_sae(first, use_error_term=True)
    module = model.hook_dict[HOOK]
    with model.saes([second]):
        assert model.acts_to_saes == {HOOK: second} and not model.hook_dict[HOOK].use_error_term
    assert model.hook_dict[HOOK] is module and module.use_error_term and model.acts_to_saes == {HOOK: first}
    with model.saes([second], reset_saes_end=False):
        pass
    assert model.acts_to_saes == {HOOK: second}
    model.reset_saes([HOOK])
    assert model.acts_to_saes == {}


def test_two_saes_and_an_sae_inside_the_fused_attention_fast_path(model, images) -> None:
    pattern_sae = make_sae(hook="blocks.0.attn.hook_pattern", d_in=17)
    resid_sae = make_sae(hook="blocks.0.hook_resid_post")
    with torch.no_grad():
        clean = model(images)
        both = [pattern_sae, resid_sae]
        assert torch.equal(model.run_with_saes(images, saes=both, use_error_term=True), clean)
        assert not torch.equal(model.run_with_saes(images, saes=[pattern_sae]), clean)  # not bypassed
        with model.saes(both):
            assert set(model.acts_to_saes) == {"blocks.0.attn.hook_pattern", "blocks.0.hook_resid_post"}
        assert model.acts_to_saes == {}


def test_run_with_cache_options(model, images) -> None:
    sae = make_sae(hook="blocks.0.hook_resid_post")
    z_sae = make_sae(hook="blocks.1.attn.hook_z", reshape_activations="hook_z")
    pooled_sae = make_sae(hook="hook_pooled")
    saes = [sae, z_sae, pooled_sae]
    with torch.no_grad():
        names = ["blocks.0.hook_resid_post.hook_sae_acts_post", "blocks.1.attn.hook_z.hook_sae_output"]
        _, cache = model.run_with_cache_with_saes(images, saes=saes, names_filter=names)
        assert set(cache.keys()) == set(names)
        assert cache[names[1]].shape == (3, 17, 4, 8)
        _, cache = model.run_with_cache_with_saes(images, saes=saes, pos_slice=0)
        assert cache["blocks.0.hook_resid_post.hook_sae_acts_post"].shape == (3, 1, 64)
        assert cache["blocks.1.attn.hook_z.hook_sae_acts_post"].shape == (3, 1, 64)  # flattened heads
        assert cache["blocks.1.attn.hook_z.hook_sae_input"].shape == (3, 1, 32)
        assert cache["blocks.1.attn.hook_z.hook_sae_output"].shape == (3, 1, 4, 8)
        assert cache["hook_pooled.hook_sae_acts_post"].shape == (3, 64)  # no position axis: untouched
        assert cache["hook_pooled.hook_sae_output"].shape == (3, 32)
        out, cache = model.run_with_cache_with_saes(images[:1], saes=saes, remove_batch_dim=True)
        assert cache["hook_pooled.hook_sae_acts_post"].shape == (64,)
        assert cache["blocks.0.hook_resid_post.hook_sae_acts_post"].shape == (17, 64)
        resid = model.run_with_saes(images, saes=[sae], stop_at_layer=1)
        _, cache = model.run_with_cache_with_saes(images, saes=[sae], stop_at_layer=1)
        assert torch.equal(resid, cache["blocks.0.hook_resid_post"])
        assert torch.equal(resid, sae.decode(cache["blocks.0.hook_resid_post.hook_sae_acts_post"]))
    assert model.acts_to_saes == {}


def test_backward_hooks_and_incl_bwd_reach_the_sae_latents(model, images, sae) -> None:
    def metric(logits):
        return logits[:, 2].sum()

    _, cache = model.run_with_cache_with_saes(images, saes=[sae], use_error_term=True, incl_bwd=True, metric=metric,
                                              names_filter=[f"{HOOK}.hook_sae_acts_post", HOOK])
    grad = cache[f"{HOOK}.hook_sae_acts_post_grad"]
    assert grad.shape == (3, 17, 64) and grad.abs().sum() > 0
    # By hand: the same gradient via autograd on a retained activation.
    kept = {}

    def keep(a, hook):
        a.retain_grad()
        kept["acts"] = a

    with model.saes([sae], use_error_term=True):
        metric(model.run_with_hooks(images, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", keep)])).backward()
    torch.testing.assert_close(kept["acts"].grad, grad, atol=1e-6, rtol=0)
    model.zero_grad(set_to_none=True)


def test_bad_splices_raise_one_line_typed_errors(model, images) -> None:
    sae = make_sae()
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ConfigError, match="no cfg.metadata.hook_name"):
        model.add_sae(sae)
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_prex"
    with pytest.raises(UnknownHookError, match="did you mean"):
        model.add_sae(sae)
    with pytest.raises(ConfigError, match="d_in=16 but hook 'blocks.1.hook_resid_pre' has width 32"):
        model.add_sae(make_sae(d_in=16))
    with pytest.raises(ConfigError, match="width 48"):
        model.add_sae(make_sae(hook="blocks.0.mlp.hook_post"))
    with pytest.raises(ConfigError, match=r"n_heads \* d_head"):
        model.add_sae(make_sae(hook="blocks.0.attn.hook_z", d_in=8, reshape_activations="hook_z"))
    with pytest.raises(ConfigError, match="width 8"):
        model.add_sae(make_sae(hook="blocks.0.attn.hook_z"))
    with pytest.raises(ConfigError, match="only fits attn.hook_z"):
        model.add_sae(_hook_z_sae_elsewhere())
    with pytest.raises(ConfigError, match="unknown token selection"):
        model.add_sae(make_sae(), tokens="CLS")
    with pytest.raises(ConfigError, match="no position axis"):
        model.add_sae(make_sae(hook="hook_pooled"), tokens="cls")
    with pytest.raises(ConfigError, match="expected a sae-lens SAE"):
        model.add_sae(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="another SAE's hook"):
        model.add_sae(make_sae(hook=f"{HOOK}.hook_sae_output"))
    transcoder = make_sae()
    transcoder.cfg.metadata.hook_name_out = "blocks.1.hook_resid_mid"
    with pytest.raises(ConfigError, match="transcoders"):
        model.add_sae(transcoder)
    assert model.acts_to_saes == {}
    # A failed add inside saes() leaves nothing behind.
    with pytest.raises(ConfigError):
        with model.saes([make_sae(), make_sae(d_in=16)]):
            pass
    assert model.acts_to_saes == {}


def _hook_z_sae_elsewhere():
    """A hook_z-reshaping SAE whose metadata names a residual hook (sae-lens checks the name only when reshaping)."""
    sae = make_sae(hook="blocks.0.attn.hook_z", reshape_activations="hook_z")
    sae.cfg.metadata.hook_name = HOOK
    return sae


def test_a_runtime_mismatch_is_caught_at_the_forward(model, images) -> None:
    sae = make_sae()
    model.add_sae(sae)
    sae.to("meta")  # moved after splicing: caught when the model runs
    with pytest.raises(ConfigError, match="sae.to"):
        model(images)
    model.reset_saes()


def test_model_to_train_and_dtype_with_an_sae_spliced(model, images, sae) -> None:
    model.add_sae(sae, use_error_term=True)
    model.train()
    assert model.hook_dict[HOOK].host.training  # hooks reading hook.training see the model's mode
    model.eval()
    assert not model.hook_dict[HOOK].host.training
    model.to(torch.float64)
    with torch.no_grad():
        out = model(images.double())
        assert out.dtype == torch.float64
        model.hook_dict[HOOK].use_error_term = False
        assert model(images.double()).dtype == torch.float64  # the float32 SAE's output is cast back
    assert sae.W_dec.dtype == torch.float32  # model.to() leaves the SAE alone, as in sae-lens
    model.reset_saes()


def test_use_error_term_defaults_to_the_sae_setting(model, images, sae) -> None:
    model.add_sae(sae)
    assert model.hook_dict[HOOK].use_error_term is False
    assert model.spliced(HOOK).sae is sae
    assert "SplicedSAE(name='blocks.1.hook_resid_pre', sae=TopKSAE(d_in=32, d_sae=64)" in repr(model.spliced(HOOK))
    model.reset_saes()


def test_in_place_edits_of_sae_hooks_do_not_leak_into_the_stream(model, images, sae) -> None:
    def zero_(a, hook):
        a.zero_()

    with torch.no_grad():
        clean = model(images)
        for name in ("hook_sae_input", "hook_sae_output"):
            out = model.run_with_hooks_with_saes(images, saes=[sae], feed_stream=False,
                                                 fwd_hooks=[(f"{HOOK}.{name}", zero_)])
            assert torch.equal(out, clean), name
        edited = model.run_with_hooks_with_saes(images, saes=[sae], use_error_term=True,
                                                fwd_hooks=[(f"{HOOK}.hook_sae_output", zero_)])
        assert not torch.equal(edited, clean)  # fed to the stream, the in-place edit counts


def test_tokens_default_to_the_sae_metadata() -> None:
    import sae_lens

    from tests.micro import images_for, micro_model

    model = micro_model()
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=48, k=4))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    images = images_for(model)
    with torch.no_grad():
        _, clean = model.run_with_cache(images, names_filter="blocks.1.hook_resid_pre")
        with model.saes([sae], use_error_term=False):
            _, everywhere = model.run_with_cache(images, names_filter="blocks.1.hook_resid_pre")
        sae.cfg.metadata.tokens = "cls"
        with model.saes([sae], use_error_term=False):
            _, cls_only = model.run_with_cache(images, names_filter="blocks.1.hook_resid_pre")
    name = "blocks.1.hook_resid_pre"
    assert not torch.equal(everywhere[name][:, 1:], clean[name][:, 1:]), "sae-lens default: every position"
    assert torch.equal(cls_only[name][:, 1:], clean[name][:, 1:]) and not torch.equal(cls_only[name][:, 0], clean[name][:, 0])
