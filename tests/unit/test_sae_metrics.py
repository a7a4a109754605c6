"""evaluate_sae equals hand computations on a tiny case; a perfect SAE scores perfectly."""

from __future__ import annotations

import json

import pytest
import sae_lens
import torch

from tests.micro import micro_model
from tests.unit.test_sae_splicing import HOOK, make_sae
from vit_interp.data import ImageDataset, prepare
from vit_interp.errors import ConfigError, DataError
from vit_interp.gating import HeadGate, keep_decisions
from vit_interp.sae.metrics import DENSE_THRESHOLD, evaluate_sae


def tiny_dataset(model, n: int = 10, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 16, 16, generator=generator)
    with torch.no_grad():
        predicted = model(prepare(images, model.cfg)).argmax(-1)
    labels = torch.where(torch.arange(n) % 2 == 0, predicted, torch.randint(0, 5, (n,), generator=generator))
    return ImageDataset(images, labels, [f"c{i}" for i in range(5)], name="tiny")


def perfect_sae(d: int = 32):
    """ReLU SAE with latents +x_i and -x_i: relu(x) - relu(-x) reconstructs x exactly."""
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=False))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = HOOK
    return sae.eval()


@torch.no_grad()
def test_metrics_equal_hand_computations() -> None:
    model = micro_model()
    data = tiny_dataset(model)
    sae = make_sae(kind="standard")
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        gate.decision["1"].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    result = evaluate_sae(model, sae, data, tokens="cls", batch_size=4, gate=gate, progress=False)

    images = prepare(data.images, model.cfg)
    _, cache = model.run_with_cache(images, names_filter=HOOK)
    x = cache[HOOK][:, 0]
    acts = sae.encode(x)
    recon = sae.decode(acts)
    error = (x - recon).pow(2).sum(-1)
    variance = x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum()
    assert result.n_images == result.n_rows == 10 and result.d_sae == 64 and result.tokens == "cls"
    assert result.explained_variance == pytest.approx(float(1 - error.mean() / variance), rel=1e-5)
    assert result.mse == pytest.approx(float(error.sum() / x.numel()), rel=1e-5)
    assert result.mse_per_row == pytest.approx(float(error.mean()), rel=1e-5)
    assert result.l0 == pytest.approx(float((acts != 0).sum(-1).double().mean()))
    frequency = (acts != 0).double().mean(0)
    assert result.dead_fraction == pytest.approx(float((frequency == 0).double().mean()))
    assert result.dense_fraction == pytest.approx(float((frequency > DENSE_THRESHOLD).double().mean()))
    assert 0 < result.dead_fraction < 1 and 0 < result.dense_fraction < 1  # the case exercises both
    assert torch.allclose(result.firing_frequency.double(), frequency)
    assert result.shrinkage == pytest.approx(float((recon.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(recon, x, dim=-1).mean()
    assert result.cosine_similarity == pytest.approx(float(cosine), rel=1e-5)

    clean_correct = (model(images).argmax(-1) == data.labels).double()
    spliced = model.run_with_saes(images, saes=[sae], tokens="cls")
    spliced_correct = (spliced.argmax(-1) == data.labels).double()
    assert result.accuracy_clean == pytest.approx(float(clean_correct.mean()))
    assert result.accuracy_spliced == pytest.approx(float(spliced_correct.mean()))
    assert result.delta_accuracy == pytest.approx(float((spliced_correct - clean_correct).mean()))
    assert result.delta_accuracy_ci[0] <= result.delta_accuracy <= result.delta_accuracy_ci[1]

    # The gate reads the CLS of the residual entering block 1: clean, then the SAE's reconstruction.
    clean_mask = keep_decisions(gate.decision["1"](x))
    spliced_mask = keep_decisions(gate.decision["1"](recon))
    assert result.gate_layers == [1]
    assert result.decision_agreement == pytest.approx(float((clean_mask == spliced_mask).double().mean()))
    assert result.mask_agreement == pytest.approx(float((clean_mask == spliced_mask).all(-1).double().mean()))
    assert result.usage_clean == pytest.approx(float(clean_mask.mean()))
    assert result.usage_spliced == pytest.approx(float(spliced_mask.mean()))
    assert 0 < result.decision_agreement < 1  # not a trivial case
    assert model.acts_to_saes == {} and not gate._attached

    summary = result.to_dict()
    json.dumps(summary)
    assert "firing_frequency" not in summary and summary["accuracy_clean_ci"] == list(result.accuracy_clean_ci)
    table = result.to_markdown()
    assert "| explained variance |" in table and "gate decisions unchanged" in table


@torch.no_grad()
def test_a_perfect_sae_scores_perfectly_and_state_is_restored() -> None:
    model = micro_model()
    data = tiny_dataset(model, n=6)
    sae = perfect_sae()
    other = make_sae()
    model.add_sae(other, use_error_term=True)  # set aside during the evaluation, then restored
    gate = HeadGate.preset("final", model.cfg).attach(model)  # an attached gate is used as is
    result = evaluate_sae(model, sae, data, tokens="all", batch_size=4, gate=gate, progress=False)
    assert result.n_rows == 6 * 17
    assert result.explained_variance == 1.0 and result.mse == 0.0 and result.shrinkage == pytest.approx(1.0)
    assert result.cosine_similarity == pytest.approx(1.0)
    assert result.accuracy_clean == result.accuracy_spliced and result.delta_accuracy == 0.0
    assert result.decision_agreement == 1.0 and result.mask_agreement == 1.0
    assert model.acts_to_saes == {HOOK: other} and model.spliced(HOOK).use_error_term
    assert len(gate._attached) == 1
    no_gate = evaluate_sae(model, sae, data, tokens="patches", progress=False)
    assert no_gate.gate_layers is None and no_gate.n_rows == 6 * 16
    assert "gate decisions" not in no_gate.to_markdown()


def test_bad_arguments_raise_one_line_errors() -> None:
    model = micro_model()
    data = tiny_dataset(model, n=2)
    sae = make_sae()
    with pytest.raises(DataError, match="ImageDataset"):
        evaluate_sae(model, sae, data.images, progress=False)
    with pytest.raises(ConfigError, match="unknown token selection"):
        evaluate_sae(model, sae, data, tokens="CLS", progress=False)
    with pytest.raises(ConfigError, match="dense_threshold"):
        evaluate_sae(model, sae, data, dense_threshold=2.0, progress=False)
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ConfigError, match="hook_name"):
        evaluate_sae(model, sae, data, progress=False)
