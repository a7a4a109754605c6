"""`vit-interp reproduce`: the whole pipeline writes its report (small runs; the full one is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vit_interp.cli import main
from vit_interp.data.fashion_mnist import DEBIAN_DIR

needs_data = pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")


@needs_data
def test_reproduce_on_the_shipped_parts_writes_every_table_and_figure(tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["reproduce", "--out", str(out), "--limit", "400", "--alphas", "0.5,4", "--no-progress", "--threads", "1"]) == 0
    table = json.loads((out / "circuits.json").read_text())
    names = [row["name"] for row in table["rows"]]
    assert names[0] == "T-shirt/top" and len(names) == 10, "every class is reported"
    for row in table["rows"]:
        assert row["alpha"] in (0.5, 1.0, 4.0)
        assert set(row["controls"]) == {"random_latents", "random_masks", "fixed_subset", "ceiling", "floor", "off_target"}
        assert row["steered_accuracy"]["low"] <= row["steered_accuracy"]["mean"] <= row["steered_accuracy"]["high"]
    report = (out / "report.md").read_text()
    assert "## Protocol (our design" in report and all(f"| {name} |" in report for name in names)
    for figure in ("before_after", "kept_heads", "dose_response", "head_class_dla", "latent_head_grad_x_act",
                   "latent_head_ablation", "latent_head_correlation"):
        assert (out / "figures" / f"{figure}.png").read_bytes()[:4] == b"\x89PNG", figure
    assert (out / "circuits.csv").read_text().count("\n") == 11
    summary = json.loads((out / "summary.json").read_text())
    assert summary["names"] == {"model": "fashion-mnist-vit", "gate": "fashion-mnist-vit-gate", "sae": "fashion-mnist-vit-sae"}
    assert "wrote" in capsys.readouterr().out


@needs_data
@pytest.mark.slow
def test_reproduce_retrain_trains_model_gate_and_sae_from_scratch(tmp_path) -> None:
    out = tmp_path / "report"
    assert main(["reproduce", "--retrain", "--out", str(out), "--limit", "300", "--model-epochs", "1", "--gate-epochs", "1",
                 "--sae-epochs", "2", "--alphas", "2", "--no-progress", "--threads", "1"]) == 0
    for part in ("model/model.safetensors", "gate/gate.json", "sae/cfg.json"):
        assert (out / "retrained" / part).is_file(), part
    summary = json.loads((out / "summary.json").read_text())
    assert summary["names"]["sae"].endswith("retrained/sae")


def test_reproduce_user_errors_exit_2_with_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--model", "no-such-model", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vit-interp: error: no model 'no-such-model'") and "\n" not in err
