"""Latent → head attribution against the real spliced, gated model; head → class DLA against the logit decomposition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sae_lens
import torch
from matplotlib.figure import Figure
from torch import nn

from tests.micro import micro_model
from vit_interp.attribution import (
    METHODS,
    HeadClassDLA,
    LatentHeadAttribution,
    component_logit_attrs,
    head_class_dla,
    latent_ablation_effect,
    latent_head_attribution,
    latent_head_attributions,
    latent_head_heatmap,
    method_agreement,
    spearman,
)
from vit_interp.data import ImageDataset, prepare
from vit_interp.errors import ClassIndexError, ConfigError, DataError, LatentIndexError, UnknownHookError
from vit_interp.gating import HeadGate
from vit_interp.sae import latent_statistics

HOOK = "blocks.1.hook_resid_pre"
D_SAE = 48
N_IMAGES = 30


def make_sae(hook: str = HOOK, seed: int = 0, **cfg) -> sae_lens.TopKSAE:
    """A random TopK SAE with noisy biases (so the error term is large and latents fire differently)."""
    torch.manual_seed(seed)
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=D_SAE, k=6, **cfg))
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(D_SAE) * 0.1)
        sae.b_dec.copy_(torch.randn(32) * 0.1)
    sae.cfg.metadata.hook_name = hook
    return sae.eval()


def make_gate(layers=(1,), read_hooks=None, seed: int = 0) -> HeadGate:
    """A random gate whose decisions vary across images (logits centred near 0)."""
    torch.manual_seed(seed)
    gate = HeadGate(32, 4, list(layers), read_hooks=read_hooks)
    with torch.no_grad():
        for net in gate.decision.values():
            net.weight.normal_(0, 0.4)
            net.bias.zero_()
    return gate


@pytest.fixture(scope="module")
def model():
    return micro_model()


@pytest.fixture(scope="module")
def data() -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(N_IMAGES, 3, 16, 16, generator=generator)
    return ImageDataset(images, torch.arange(N_IMAGES) % 5, list("abcde"), "fake", "val")


@pytest.fixture(scope="module")
def sae():
    return make_sae()


@pytest.fixture(scope="module")
def gate():
    return make_gate()


@pytest.fixture(scope="module")
def results(model, sae, gate, data) -> dict[str, LatentHeadAttribution]:
    return latent_head_attributions(model, sae, gate, data, classes="all", batch_size=8, progress=False)


def spliced_run(model, sae, gate, data, fwd_hooks=(), layer=1):
    """Run the real gated model with ``sae`` spliced (error term, CLS) and return the gate's logits."""
    images = prepare(data.images, model.cfg)
    with model.saes([sae], use_error_term=True, tokens="cls"), gate.attached(model):
        model.run_with_hooks(images, fwd_hooks=list(fwd_hooks))
        return gate.last_logits[layer]


def autograd_grad_x_act(model, sae, gate, data, layer=1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a_j * d(gate logit_h)/d(a_j) by autograd through the spliced path: [images, d_sae, heads]."""
    store = {}

    def leaf(acts, hook):
        store["acts"] = acts.detach().requires_grad_(True)
        return store["acts"]

    logits = spliced_run(model, sae, gate, data, [(f"{HOOK}.hook_sae_acts_post", leaf)], layer)
    acts = store["acts"]
    per_head = []
    for h in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, h].sum(), acts, retain_graph=True)
        per_head.append((grad * acts)[:, 0].detach())  # the CLS token
    return torch.stack(per_head, dim=-1).double(), acts[:, 0].detach()


# grad x act ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("read", ["hook", "sae_output"])
def test_grad_x_act_equals_autograd_through_the_spliced_gated_model(model, sae, data, read) -> None:
    gate = make_gate(read_hooks=[HOOK if read == "hook" else f"{HOOK}.hook_sae_output"])
    result = latent_head_attribution(model, sae, gate, data, "grad_x_act", classes=["b", 3], batch_size=7, progress=False)
    per_image, acts = autograd_grad_x_act(model, sae, gate, data)
    torch.testing.assert_close(result.matrix, per_image.mean(0), atol=1e-5, rtol=1e-5)
    for i, c in enumerate([1, 3]):
        mine = data.labels == c
        torch.testing.assert_close(result.class_matrix[i], per_image[mine].mean(0), atol=1e-5, rtol=1e-5)
        assert torch.equal(result.class_fire_counts[i], (acts[mine] != 0).sum(0))
    assert torch.equal(result.fire_counts, (acts != 0).sum(0)) and result.class_counts.tolist() == [6, 6]
    assert result.target == "logit" and result.n_images == N_IMAGES and result.hook_name == HOOK


def test_grad_x_act_of_a_linear_gate_sums_to_the_logit_share_of_the_reconstruction(model, sae, gate, data, results) -> None:
    """Completeness: Σ_j a_j (d_j · W_h) = W_h · (x̂ - decode(0)) for every image."""
    images = prepare(data.images, model.cfg)
    _, cache = model.run_with_cache(images, names_filter=HOOK)
    x = cache[HOOK][:, 0]
    with torch.no_grad():
        recon_share = sae.decode(sae.encode(x)) - sae.decode(torch.zeros(1, D_SAE))
    expected = (recon_share @ gate.decision["1"].weight.T).double().mean(0)
    torch.testing.assert_close(results["grad_x_act"].matrix.sum(0), expected, atol=1e-5, rtol=1e-5)


def test_nonlinear_decision_network_uses_its_jacobian(model, sae, data) -> None:
    gate = make_gate()
    torch.manual_seed(3)
    gate.decision["1"] = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
    result = latent_head_attribution(model, sae, gate, data, "grad_x_act", progress=False)
    per_image, _ = autograd_grad_x_act(model, sae, gate, data)
    torch.testing.assert_close(result.matrix, per_image.mean(0), atol=1e-5, rtol=1e-5)
    ablation = latent_head_attribution(model, sae, gate, data, "ablation", progress=False)
    fired = ablation.top_latents(3)
    torch.testing.assert_close(latent_ablation_effect(model, sae, gate, data, fired, progress=False),
                               ablation.matrix[fired], atol=1e-5, rtol=0)


def test_other_gated_layers_stay_active_while_harvesting(model, data) -> None:
    """With gates on layers 0 and 1, layer 1's input depends on layer 0's decisions."""
    sae = make_sae(seed=4)
    gate = make_gate(layers=(0, 1), seed=2)
    with torch.no_grad():
        gate.decision["0"].bias.copy_(torch.tensor([-9.0, 9.0, -9.0, 9.0]))  # prune heads 0 and 2 of layer 0
    result = latent_head_attribution(model, sae, gate, data, "grad_x_act", layer=1, progress=False)
    per_image, _ = autograd_grad_x_act(model, sae, gate, data)
    torch.testing.assert_close(result.matrix, per_image.mean(0), atol=1e-5, rtol=1e-5)
    ungated = latent_head_attribution(model, sae, make_gate(layers=(1,), seed=2), data, "grad_x_act", progress=False)
    assert not torch.allclose(ungated.matrix, result.matrix)
    assert not gate._attached and not model.acts_to_saes and not any(h.fwd_hooks for h in model.hook_dict.values())


# ablation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["probability", "decision"])
def test_ablation_equals_rerunning_the_gated_model_with_the_latent_zeroed(model, sae, gate, data, results, target) -> None:
    result = results["ablation"] if target == "probability" else latent_head_attribution(
        model, sae, gate, data, "ablation", target=target, batch_size=8, progress=False)
    squash = torch.sigmoid if target == "probability" else (lambda logits: (logits > 0).double())
    clean = squash(spliced_run(model, sae, gate, data).double())
    latents = results["grad_x_act"].top_latents(4)
    for j in latents:
        def zero(acts, hook, j=j):
            acts = acts.clone()
            acts[:, 0, j] = 0
            return acts

        with torch.no_grad():
            ablated = squash(spliced_run(model, sae, gate, data, [(f"{HOOK}.hook_sae_acts_post", zero)]).double())
        torch.testing.assert_close(result.matrix[j], (clean - ablated).mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(latent_ablation_effect(model, sae, gate, data, latents, target=target, batch_size=8,
                                                      progress=False), result.matrix[latents], atol=1e-5, rtol=0)
    if target == "decision":
        assert result.matrix.abs().sum() > 0, "some latent flips some decision (the test would be vacuous otherwise)"


def test_ablation_is_first_order_close_to_grad_x_act_in_probability(results) -> None:
    """Same sign wherever the effect is sizeable: both measure the latent's push on the gate."""
    gxa, ablation = results["grad_x_act"].matrix, results["ablation"].matrix
    big = ablation.abs() > 1e-3
    assert big.any() and bool((torch.sign(gxa[big]) == torch.sign(ablation[big])).all())


# correlation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["logit", "decision"])
def test_correlation_equals_numpy_corrcoef(model, sae, gate, data, results, target) -> None:
    result = results["correlation"] if target == "logit" else latent_head_attribution(
        model, sae, gate, data, "correlation", target=target, classes="all", progress=False)
    logits = spliced_run(model, sae, gate, data).detach().double()
    values = logits if target == "logit" else (logits > 0).double()
    _, acts = autograd_grad_x_act(model, sae, gate, data)
    acts = acts.double().numpy()
    for c, mine in [(None, np.ones(N_IMAGES, bool)), (2, (data.labels == 2).numpy())]:
        matrix = result.matrix if c is None else result.values(c)
        for j in range(D_SAE):
            for h in range(4):
                a, t = acts[mine, j], values.numpy()[mine, h]
                if a.std() == 0 or t.std() == 0:
                    assert math.isnan(matrix[j, h]), (c, j, h)
                else:
                    assert matrix[j, h] == pytest.approx(np.corrcoef(a, t)[0, 1], abs=1e-6), (c, j, h)


def test_never_fired_latents_are_zero_rows_or_nan_rows(results) -> None:
    never = results["grad_x_act"].never_fired
    assert 0 < len(never) < D_SAE, "the fixture should have both kinds of latents"
    for method in ("grad_x_act", "ablation"):
        assert torch.equal(results[method].matrix[never], torch.zeros(len(never), 4, dtype=torch.float64))
    assert torch.isnan(results["correlation"].matrix[never]).all()
    assert results["grad_x_act"].to_dict()["never_fired"] == never.tolist()
    assert torch.isnan(results["ablation"].when_firing[never]).all()
    fired = results["ablation"].fire_counts > 0
    torch.testing.assert_close(results["ablation"].when_firing[fired],
                               results["ablation"].matrix[fired] * N_IMAGES / results["ablation"].fire_counts[fired, None])


def test_all_methods_come_from_one_harvest_that_stops_at_the_sae_hook(model, sae, gate, data) -> None:
    calls = {"embed": 0, "gated_block": 0}

    def count(name):
        def hook(tensor, hook):
            calls[name] += 1
        return hook

    model.add_perma_hook("hook_embed", count("embed"))
    model.add_perma_hook("blocks.1.attn.hook_z", count("gated_block"))
    try:
        latent_head_attributions(model, sae, gate, data, METHODS, batch_size=8, progress=False)
    finally:
        model.reset_hooks(including_permanent=True)
    assert calls == {"embed": math.ceil(N_IMAGES / 8), "gated_block": 0}


# results -------------------------------------------------------------------------------------------
def test_result_views_rank_export_and_plot(model, sae, data, results) -> None:
    result = results["grad_x_act"]
    on = result.top_latents_for_head(2, 3, "positive")
    off = result.top_latents_for_head(2, 3, "negative")
    column = result.matrix[:, 2]
    assert on[0]["value"] == pytest.approx(float(column.max())) and off[0]["value"] == pytest.approx(float(column.min()))
    assert all(r["value"] > 0 for r in on) and all(r["value"] < 0 for r in off)
    assert [r["value"] for r in on] == sorted((r["value"] for r in on), reverse=True)
    by_abs = result.top_latents_for_head(2, 100)
    assert len(by_abs) == int((result.fire_counts > 0).sum()) and abs(by_abs[0]["value"]) == float(column.abs().max())
    assert result.top_latents_for_head(0, 2, class_="c")[0]["latent"] in range(D_SAE)
    csv = result.to_csv().splitlines()
    assert csv[0] == "latent,fire_count,L1H0,L1H1,L1H2,L1H3" and len(csv) == D_SAE + 1
    assert float(csv[1 + on[0]["latent"]].split(",")[4]) == pytest.approx(on[0]["value"], rel=1e-6)
    assert len(result.to_csv(class_="a").splitlines()) == D_SAE + 1
    assert "| L1H2 |" in result.to_markdown() and set(result.to_dict()["heads"]) == set(result.head_labels)
    stats = latent_statistics(model, sae, data, progress=False)
    figure = latent_head_heatmap(result, n=5, stats=stats)
    assert isinstance(figure, Figure)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    top = result.top_latents(5)
    assert len(labels) == 5 and labels[0].startswith(f"{top[0]} · ") and labels[0].split(" · ")[1].split(" (")[0] in "abcde"
    assert isinstance(results["correlation"].heatmap(latents=[0, 1, 2], class_="e"), Figure)


def test_method_agreement_and_spearman() -> None:
    pytest.importorskip("scipy")
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.normal(size=40)  # ties in x
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman(np.ones(5), y[:5]))


def test_method_agreement_of_the_three_methods(results) -> None:
    agreement = method_agreement(results, top=3)
    assert set(agreement.spearman) == {("grad_x_act", "ablation"), ("grad_x_act", "correlation"), ("ablation", "correlation")}
    assert agreement.spearman[("grad_x_act", "ablation")] > 0.9, "sigmoid is monotone: same ranks to first order"
    same = method_agreement({"a": results["ablation"], "b": results["ablation"]})
    assert same.spearman[("a", "b")] == pytest.approx(1.0) and same.top_overlap[("a", "b")] == [1.0] * 4
    assert "grad_x_act vs ablation" in agreement.to_markdown() and "pairs" in agreement.to_dict()


# head -> class DLA -----------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    dict(), dict(pool="mean", final_norm="post_pool"), dict(pool="mean", final_norm="pre_pool", n_register_tokens=1),
    dict(pool="cls_dist", distill_token=True)], ids=["cls", "mean_fc_norm", "mean_prepool_norm", "distilled"])
def test_head_dla_sums_to_the_attention_output_and_fits_the_logit_decomposition(data, overrides) -> None:
    model = micro_model(**overrides)
    dla = head_class_dla(model, data, layer=-1, batch_size=8, progress=False)
    assert dla.layer == 1 and dla.head_labels == ["L1H0", "L1H1", "L1H2", "L1H3"] and dla.keep_rate is None
    torch.testing.assert_close(dla.head_dla.sum(0) + dla.bias_dla, dla.attn_out_dla, atol=1e-5, rtol=0)
    # Independently: per image, every component of the full decomposition plus the classifier's constant
    # is the logit, and this layer's heads are TransformerLens' stack_head_results entries.
    images = prepare(data.images, model.cfg)
    with torch.no_grad():
        logits, cache = model.run_with_cache(images)
    labels = data.labels
    stack, names = cache.get_full_resid_decomposition(expand_neurons=False, return_labels=True)
    attrs = component_logit_attrs(model, cache, stack, labels)
    heads = cache.stack_head_results(layer=2)[-4:]
    torch.testing.assert_close(component_logit_attrs(model, cache, heads, labels),
                               attrs[[names.index(f"L1H{h}") for h in range(4)]], atol=1e-6, rtol=0)
    constant = model.b_U + model.ln_final.b @ model.W_U
    if model.cfg.pool == "cls_dist":
        constant = (constant + model.classifier.b_U_dist + model.ln_final.b @ model.classifier.W_U_dist) / 2
    true_logit = logits.gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(attrs.sum(0) + constant[labels], true_logit, atol=1e-4, rtol=0)
    for c in range(5):
        mine = labels == c
        head_means = attrs[[names.index(f"L1H{h}") for h in range(4)]][:, mine].mean(1).double()
        torch.testing.assert_close(dla.head_dla[:, c], head_means, atol=1e-5, rtol=0)
        assert dla.logit[c] == pytest.approx(float(true_logit[mine].mean()), abs=1e-5)


def test_gated_dla_gives_pruned_heads_exactly_zero(model, data) -> None:
    gate = make_gate(seed=5)
    with torch.no_grad():
        gate.decision["1"].weight.zero_()
        gate.decision["1"].bias.copy_(torch.tensor([-5.0, 5.0, 5.0, -5.0]))  # heads 0 and 3 always pruned
    dla = head_class_dla(model, data, 1, gate=gate, classes=["d", "a"], progress=False)
    assert isinstance(dla, HeadClassDLA) and dla.class_names == ["d", "a"] and dla.n_images == 12
    assert torch.equal(dla.head_dla[[0, 3]], torch.zeros(2, 2, dtype=torch.float64))
    assert dla.keep_rate.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    keep = torch.tensor([0.0, 1.0, 1.0, 0.0])
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_head_mask", lambda mask, hook: mask * keep)]):
        masked = head_class_dla(model, data, 1, classes=["d", "a"], progress=False)
    torch.testing.assert_close(dla.head_dla, masked.head_dla, atol=1e-6, rtol=0)
    ungated = head_class_dla(model, data, 1, classes=["d", "a"], progress=False)
    assert not torch.allclose(ungated.head_dla[[0, 3]], torch.zeros(2, 2, dtype=torch.float64))
    assert dla.top_heads_for_class("a")[-1]["keep_rate"] in (0.0, 1.0)
    assert "(0.00)" in dla.to_markdown() and dla.to_csv().splitlines()[0].endswith("keep_L1H3")
    assert set(dla.to_dict()) >= {"head_dla", "keep_rate", "other", "classes"}
    assert isinstance(dla.heatmap(), Figure) and isinstance(dla.heatmap(when_kept=True), Figure)


# bad inputs ------------------------------------------------------------------------------------------
def _bad_calls(model, sae, gate, data, result):
    return [
        (lambda: latent_head_attribution(model, make_sae(hook="blocks.0.hook_resid_pre"), gate, data, progress=False),
         ConfigError, r"the SAE sits at 'blocks.0.hook_resid_pre' but the gate of layer 1 reads 'blocks.1.hook_resid_pre'"),
        (lambda: latent_head_attribution(model, sae, gate, data, layer=0, progress=False),
         ConfigError, r"layer 0 is not gated by this gate \(gated layers \[1\]\)"),
        (lambda: latent_head_attribution(model, sae, make_gate(layers=(0, 1)), data, progress=False),
         ConfigError, r"the gate gates layers \[0, 1\]; pass layer="),
        (lambda: latent_ablation_effect(model, sae, gate, data, [3, D_SAE], progress=False),
         LatentIndexError, rf"latent {D_SAE} is out of range; this SAE has latents 0..{D_SAE - 1}"),
        (lambda: latent_head_heatmap(result, latents=[-1]), LatentIndexError, "latent -1 is out of range"),
        (lambda: latent_head_attribution(model, sae, gate, data, method="saliency"), ConfigError,
         r"unknown attribution method 'saliency'; choose one of \['grad_x_act'"),
        (lambda: latent_head_attribution(model, sae, gate, data, method="grad_x_act", target="probability"),
         ConfigError, r"target 'probability' does not apply to grad_x_act; choose one of \['logit'\]"),
        (lambda: latent_head_attribution(model, make_sae(normalize_activations="layer_norm"), gate, data),
         ConfigError, "the SAE rescales its output per input"),
        (lambda: latent_head_attribution(model, sae, HeadGate(16, 4, [1]), data), ConfigError,
         "gate built for d_model=16, n_heads=4 but the model has d_model=32"),
        (lambda: latent_head_attribution(model, sae, gate, data.images), DataError, "labelled ImageDataset"),
        (lambda: latent_head_attribution(model, sae, gate, data, classes=["z"]), ClassIndexError, "unknown class 'z'"),
        (lambda: latent_head_attribution(model, make_sae(hook="blocks.1.hook_resid_prex"), make_gate(
            read_hooks=["blocks.1.hook_resid_prex"]), data), UnknownHookError, "unknown hook name 'blocks.1.hook_resid_prex'"),
        (lambda: result.top_latents_for_head(4), ConfigError, r"head 4 is out of range; layer 1 has heads 0..3"),
        (lambda: result.values("a"), ConfigError, "no per-class matrices"),
        (lambda: head_class_dla(model, data, layer=2), ConfigError, "layer 2 is out of range for a model with 2 layers"),
        (lambda: head_class_dla(model, data, layer=1, classes=[7]), ClassIndexError, r"class 7 is not a class name"),
        (lambda: head_class_dla(object(), data, layer=1), ConfigError, "expected a HookedViT, got object"),
    ]


def test_bad_inputs_are_one_line_typed_errors(model, sae, gate, data) -> None:
    result = latent_head_attribution(model, sae, gate, data, progress=False)
    for call, error, message in _bad_calls(model, sae, gate, data, result):
        with pytest.raises(error, match=message) as info:
            call()
        assert "\n" not in str(info.value), str(info.value)
    with pytest.raises(UnknownHookError):  # an SAE-output read hook needs the SAE spliced
        head_class_dla(model, data, 1, gate=make_gate(read_hooks=[f"{HOOK}.hook_sae_output"]))
