"""``vit-interp train`` / ``evaluate`` end to end on small subsets, and saved-model loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vit_interp import HookedViT
from vit_interp.cli import main
from vit_interp.data.fashion_mnist import DEBIAN_DIR
from vit_interp.errors import ConfigError
from vit_interp.loading import available_models, load_card
from tests.micro import images_for, micro_model

needs_data = pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")


@needs_data
def test_train_a_tiny_timm_vit_then_evaluate_it(tmp_path, capsys) -> None:
    """The paper's path (fine-tune a timm ViT, images resized to its resolution) on a tiny random model."""
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--out", str(out), "--model", "timm:vit_tiny_patch16_224",
            "--timm-arg", "depth=1", "--timm-arg", "img_size=32", "--timm-arg", "patch_size=8", "--timm-arg", "embed_dim=48",
            "--timm-arg", "num_heads=3", "--epochs", "1", "--limit", "300", "--no-progress", "--device", "auto"]
    assert main(args) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["config"]["image_size"] == [32, 32] and card["config"]["in_channels"] == 3
    assert card["command"].startswith("vit-interp train --dataset fashion-mnist")
    assert len(card["dataset"]["files_sha256"]) == 4 and card["test"]["n"] == 10000
    assert "| Ankle boot |" in (out / "README.md").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", "fashion-mnist", "--no-progress", "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "on 10000 test images" in printed
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == pytest.approx(card["test"]["accuracy"])


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:
    model = micro_model(class_names=list("abcde"))
    model.save_pretrained(tmp_path / "m", card={"note": "test"})
    again = HookedViT.from_pretrained(tmp_path / "m")
    images = images_for(model)
    with torch.no_grad():
        assert torch.equal(model(images), again(images))
    assert again.cfg.class_names == list("abcde") and load_card(tmp_path / "m") == {"note": "test"}
    folded = HookedViT.from_pretrained(tmp_path / "m", fold_ln=True)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), model(images), atol=1e-5, rtol=0)


def test_unknown_model_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match=r"no model 'fashion-mnist-vitt': not a shipped model \(") as error:
        HookedViT.from_pretrained("fashion-mnist-vitt")
    for name in available_models():
        assert name in str(error.value)


@needs_data
def test_train_gate_command_on_the_shipped_model(tmp_path, capsys) -> None:
    from vit_interp.gating import HeadGate

    out = tmp_path / "gate"
    assert main(["train-gate", "fashion-mnist-vit", "--out", str(out), "--target", "0.5", "--epochs", "1",
                 "--limit", "512", "--test-limit", "2000", "--no-progress", "--threads", "1"]) == 0
    spec = json.loads((out / "gate.json").read_text())
    assert spec["gate"]["layers"] == [5] and spec["card"]["test"]["per_class"][0]["name"] == "T-shirt/top"
    assert 0 <= spec["card"]["test"]["usage"] <= 1 and "| **all** | 2000 |" in (out / "report.md").read_text()
    assert HeadGate.load(out).layers == [5]
    assert "saved gate to" in capsys.readouterr().out
    rows = {row["name"]: row for row in spec["card"]["controls"]["rows"]}
    assert {"ceiling (no pruning)", "gate", "random masks", "floor (gated heads all pruned)"} <= set(rows)
    assert 1 <= sum(name.startswith("best fixed subset, ") for name in rows) <= 2
    assert rows["gate"]["accuracy"] == spec["card"]["test"]["accuracy"]
    from vit_interp.data import load_dataset
    from vit_interp.training import evaluate

    dense = evaluate(HookedViT.from_pretrained("fashion-mnist-vit"), load_dataset("fashion-mnist", "test").head(2000), progress=False)
    assert rows["ceiling (no pruning)"]["accuracy"] == pytest.approx(dense.accuracy, abs=1e-4), "the ceiling is the dense model"
    assert (out / "head_usage.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Controls on the same test images" in (out / "README.md").read_text()


@needs_data
def test_gate_curve_command_writes_curve_and_figure(tmp_path, capsys) -> None:
    out = tmp_path / "curve"
    assert main(["gate-curve", "fashion-mnist-vit", "--out", str(out), "--targets", "0.3,0.8", "--epochs", "1",
                 "--limit", "512", "--test-limit", "1000", "--n-random", "1", "--no-progress", "--threads", "1"]) == 0
    points = json.loads((out / "curve.json").read_text())["points"]
    assert [p["target"] for p in points if p["kind"] == "gate"] == [0.3, 0.8]
    assert sum(p["kind"] == "fixed" for p in points) == 5 and sum(p["kind"] == "random" for p in points) == 2
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and (out / "curve.csv").read_text().startswith("kind,")
    with pytest.raises(SystemExit, match="comma-separated numbers"):
        main(["gate-curve", "fashion-mnist-vit", "--out", str(out), "--targets", "low,high"])
