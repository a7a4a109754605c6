"""The shipped SAE: plain sae-lens loads it, it meets its targets, and its card's numbers are measured."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_interp import HookedViT
from vit_interp.data import load_dataset
from vit_interp.data.fashion_mnist import DEBIAN_DIR
from vit_interp.gating import HeadGate
from vit_interp.loading.pretrained import PRETRAINED_DIR
from vit_interp.sae import available_saes, evaluate_sae, load_sae

NAME = "fashion-mnist-vit-sae"
needs_data = pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")


def card() -> dict:
    import json

    return json.loads((PRETRAINED_DIR / NAME / "card.json").read_text())


def test_shipped_sae_loads_with_plain_sae_lens_and_meets_its_targets() -> None:
    from sae_lens import SAE, TopKSAE

    assert NAME in available_saes()
    plain = SAE.load_from_disk(str(PRETRAINED_DIR / NAME))
    assert isinstance(plain, TopKSAE) and plain.cfg.metadata.hook_name == "blocks.5.hook_resid_pre"
    model = HookedViT.from_pretrained("fashion-mnist-vit")
    ours = load_sae(NAME, model=model)
    x = torch.randn(4, 96)
    torch.testing.assert_close(ours(x), plain(x))
    written = card()
    assert written["command"].startswith("vit-interp train-sae fashion-mnist-vit") and written["tokens"] == "cls"
    assert written["test"]["explained_variance"] >= 0.90 and written["test"]["dead_fraction"] <= 0.10
    spliced = written["test_spliced"]
    assert spliced["gate_layers"] == [5] and spliced["decision_agreement"] > 0.9


@needs_data
def test_sae_card_matches_what_evaluate_sae_measures() -> None:
    model = HookedViT.from_pretrained("fashion-mnist-vit")
    sae = load_sae(NAME, model=model)
    test = load_dataset("fashion-mnist", "test")
    result = evaluate_sae(model, sae, test, tokens="cls", gate=HeadGate.load("fashion-mnist-vit-gate"), progress=False)
    written = card()["test_spliced"]
    for key in ("explained_variance", "l0", "dead_fraction", "accuracy_clean", "accuracy_spliced", "decision_agreement",
                "mask_agreement", "usage_clean", "usage_spliced"):
        assert getattr(result, key) == pytest.approx(written[key], abs=2e-4), key
    assert result.explained_variance >= 0.90 and result.dead_fraction <= 0.10
    # The error term makes splicing exact: the gated model is bit-identical with and without the SAE.
    images = torch.rand(8, 1, 28, 28)
    from vit_interp.data import prepare

    batch = prepare(images, model.cfg)
    with torch.no_grad(), HeadGate.load("fashion-mnist-vit-gate").attached(model):
        clean = model(batch)
        with model.saes([sae], use_error_term=True, tokens="cls"):
            spliced = model(batch)
    assert torch.equal(clean, spliced)
