"""``vit-interp attribute`` end to end on a saved micro model, gate and SAE with a fake dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import sae_lens
import torch

from tests.micro import micro_model
from vit_interp.cli import main
from vit_interp.data import ImageDataset
from vit_interp.data.fashion_mnist import DEBIAN_DIR
from vit_interp.gating import HeadGate
from vit_interp.sae import available_saes, save_sae

HOOK = "blocks.1.hook_resid_pre"


def fake_dataset(split: str, n: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    return ImageDataset(torch.rand(n, 3, 16, 16, generator=generator), torch.arange(n) % 5, list("abcde"), "fake", split)


@pytest.fixture
def saved(tmp_path, monkeypatch):
    import vit_interp.data

    requested = []

    def load_dataset(name, split="train", root=None, **kwargs):
        requested.append(split)
        return fake_dataset(split, 40)

    monkeypatch.setattr(vit_interp.data, "load_dataset", load_dataset)
    model = micro_model(class_names=list("abcde"))
    model.save_pretrained(tmp_path / "model")
    torch.manual_seed(0)
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        gate.decision["1"].weight.normal_(0, 0.4)
    gate.save(tmp_path / "gate")
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=48, k=6))
    sae.cfg.metadata.hook_name = HOOK
    save_sae(sae, tmp_path / "sae")
    base = ["attribute", str(tmp_path / "model"), "--gate", str(tmp_path / "gate"), "--sae", str(tmp_path / "sae"),
            "--dataset", "fake", "--no-progress", "--device", "cpu"]
    return base, requested


def test_attribute_writes_matrices_heatmaps_json_and_report(tmp_path, saved, capsys) -> None:
    base, requested = saved
    out = tmp_path / "out"
    assert main(base + ["--out", str(out), "--top", "5", "--limit", "30", "--batch-size", "16"]) == 0
    assert requested == ["val"], "attributes on the validation split by default"
    for method in ("grad_x_act", "ablation", "correlation"):
        rows = list(csv.reader((out / f"latent_head_{method}.csv").open()))
        assert rows[0] == ["latent", "fire_count", "L1H0", "L1H1", "L1H2", "L1H3"] and len(rows) == 49
        assert (out / f"latent_head_{method}.png").stat().st_size > 1000
    dla_rows = list(csv.reader((out / "head_class_dla.csv").open()))
    assert dla_rows[0][:6] == ["class", "n", "L1H0", "L1H1", "L1H2", "L1H3"] and [r[0] for r in dla_rows[1:]] == list("abcde")
    assert sum(int(r[1]) for r in dla_rows[1:]) == 30
    summary = json.loads((out / "attribution.json").read_text())
    assert summary["command"].startswith("vit-interp attribute") and summary["layer"] == 1 and summary["n_images"] == 30
    assert set(summary["latent_head"]) == {"grad_x_act", "ablation", "correlation"} and summary["hook_name"] == HOOK
    assert len(summary["latent_head"]["ablation"]["heads"]["L1H0"]["on"]) <= 5
    assert "grad_x_act vs correlation" in summary["agreement"]["pairs"]
    report = (out / "report.md").read_text()
    assert "## Agreement between methods" in report and "![head class DLA](head_class_dla.png)" in report
    assert "wrote 3 latent→head matrices" in capsys.readouterr().out


def test_attribute_one_method_on_test_split(tmp_path, saved) -> None:
    base, requested = saved
    out = tmp_path / "one"
    assert main(base + ["--out", str(out), "--method", "ablation", "--split", "test"]) == 0
    assert requested == ["test"]
    assert sorted(p.name for p in out.glob("latent_head_*")) == ["latent_head_ablation.csv", "latent_head_ablation.png"]
    assert json.loads((out / "attribution.json").read_text())["agreement"] is None


def test_attribute_user_errors_exit_2_with_one_line(tmp_path, saved, capsys) -> None:
    base, _ = saved
    other = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=16, k=2))
    other.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    save_sae(other, tmp_path / "sae0")
    sae_arg = base.index("--sae") + 1
    wrong_sae = base[:sae_arg] + [str(tmp_path / "sae0")] + base[sae_arg + 1:]
    cases = [
        (wrong_sae, "the SAE sits at 'blocks.0.hook_resid_pre' but the gate of layer 1 reads 'blocks.1.hook_resid_pre'"),
        (base + ["--layer", "0"], "layer 0 is not gated by this gate"),
        (base + ["--top", "0"], "--top (0) and --batch-size (256) must be positive"),
        ([base[0], str(tmp_path / "nowhere")] + base[2:], "no model"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"vit-interp: error: {message}") and err.count("\n") == 1, err


needs_shipped = pytest.mark.skipif(
    not Path(DEBIAN_DIR).is_dir() or "fashion-mnist-vit-sae" not in available_saes(),
    reason="needs Debian's dataset-fashion-mnist (make test installs it) and the shipped SAE fashion-mnist-vit-sae")


@needs_shipped
def test_attribute_on_the_shipped_model_gate_and_sae(tmp_path) -> None:
    out = tmp_path / "shipped"
    args = ["attribute", "fashion-mnist-vit", "--gate", "fashion-mnist-vit-gate", "--sae", "fashion-mnist-vit-sae",
            "--out", str(out), "--limit", "200", "--top", "10", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads((out / "attribution.json").read_text())
    assert summary["layer"] == 5 and summary["hook_name"] == "blocks.5.hook_resid_pre" and summary["n_images"] == 200
    assert summary["agreement"]["pairs"]["grad_x_act vs ablation"]["spearman"] > 0.9
    assert summary["head_class_dla"]["classes"][0] == "T-shirt/top" and sum(summary["head_class_dla"]["counts"]) == 200
