"""The shipped default model: loads offline by name and its card's numbers are what evaluate measures."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vit_interp import HookedViT
from vit_interp.data import load_dataset
from vit_interp.data.fashion_mnist import DEBIAN_DIR, fashion_mnist_files
from vit_interp.loading import available_models, load_card
from vit_interp.loading.pretrained import PRETRAINED_DIR
from vit_interp.training import evaluate

NAME = "fashion-mnist-vit"


def test_shipped_model_loads_offline_with_six_heads_and_is_small() -> None:
    assert NAME in available_models()
    model = HookedViT.from_pretrained(NAME)
    assert (model.cfg.n_heads, model.cfg.n_layers, model.cfg.n_classes) == (6, 6, 10)
    assert model.cfg.class_names[0] == "T-shirt/top"
    size = sum(f.stat().st_size for f in (PRETRAINED_DIR / NAME).iterdir())
    assert size < 5 * 2**20, f"shipped model folder is {size / 2**20:.1f} MB"
    card = load_card(NAME)
    assert card["command"].startswith("vit-interp train --dataset fashion-mnist") and card["seed"] == 0
    assert card["test"]["accuracy"] >= 0.88


@pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")
def test_card_matches_what_evaluate_measures_on_the_test_split() -> None:
    card = load_card(NAME)
    hashes = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in fashion_mnist_files()}
    assert hashes == card["dataset"]["files_sha256"], "the card was made on other Fashion-MNIST files"
    test = load_dataset("fashion-mnist", "test")
    assert card["dataset"]["n_test"] == len(test)
    result = evaluate(HookedViT.from_pretrained(NAME), test, progress=False)
    # Same weights, same images: only float summation order across machines could flip a borderline image.
    assert result.accuracy == pytest.approx(card["test"]["accuracy"], abs=2e-4)
    for measured, written in zip(result.per_class, card["test"]["per_class"]):
        assert measured.name == written["name"]
        assert measured.accuracy == pytest.approx(written["accuracy"], abs=2e-3)
    assert result.accuracy >= 0.88
