"""The shipped head gate: loads offline by name, and its card's numbers are what evaluate_gate measures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_interp import HookedViT
from vit_interp.data import load_dataset
from vit_interp.data.fashion_mnist import DEBIAN_DIR
from vit_interp.gating import HeadGate, available_gates
from vit_interp.gating.evaluation import evaluate_gate
from vit_interp.loading import load_card
from vit_interp.loading.pretrained import PRETRAINED_DIR

NAME = "fashion-mnist-vit-gate"
needs_data = pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")


def test_shipped_gate_loads_by_name_for_the_shipped_model() -> None:
    assert NAME in available_gates()
    gate = HeadGate.load(NAME)
    card = HeadGate.load_card(NAME)
    model = HookedViT.from_pretrained(card["model"])
    assert card["model"] == "fashion-mnist-vit" and card["preset"] == "final" and card["settings"]["finetune_backbone"] is False
    assert gate.layers == [model.cfg.n_layers - 1] and gate.read_hooks == {5: "blocks.5.hook_resid_pre"}
    gate.check_compatible(model)
    assert card["command"].startswith("vit-interp train-gate fashion-mnist-vit")
    # Room to steer both ways, as the paper's baseline (0.72): neither everything nor nothing kept.
    assert 0.5 <= card["test"]["usage"] <= 0.85
    assert (PRETRAINED_DIR / NAME / "head_usage.png").read_bytes()[:4] == b"\x89PNG"
    assert card["test"]["accuracy"] >= load_card("fashion-mnist-vit")["test"]["accuracy"] - 0.02, "within 2 pp of dense"


@needs_data
def test_gate_card_matches_what_evaluate_gate_measures() -> None:
    card = HeadGate.load_card(NAME)
    model = HookedViT.from_pretrained("fashion-mnist-vit")
    test = load_dataset("fashion-mnist", "test")
    result = evaluate_gate(model, HeadGate.load(NAME), test, progress=False)
    written = card["test"]
    assert result.accuracy == pytest.approx(written["accuracy"], abs=2e-4)
    assert result.usage == pytest.approx(written["usage"], abs=2e-4)
    for measured, row in zip(result.per_class, written["per_class"]):
        assert measured["name"] == row["name"]
        assert measured["accuracy"] == pytest.approx(row["accuracy"], abs=2e-3)
        assert measured["usage"] == pytest.approx(row["usage"], abs=2e-3)
    torch.testing.assert_close(result.keep_rate, torch.tensor(written["keep_rate_per_class_layer_head"]), atol=2e-3, rtol=0)
    # Controls on the card: the ceiling is the shipped model's accuracy, the floor below it.
    rows = {row["name"]: row for row in card["controls"]["rows"]}
    assert rows["ceiling (no pruning)"]["accuracy"] == pytest.approx(load_card("fashion-mnist-vit")["test"]["accuracy"], abs=2e-4)
    assert rows["floor (gated heads all pruned)"]["accuracy"] < rows["ceiling (no pruning)"]["accuracy"]
