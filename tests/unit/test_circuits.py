"""Per-class circuits: the α rule, the numbers, and the controls, on a micro system."""

from __future__ import annotations

import pytest
import torch

from tests.unit.test_steering import random_sae, synthetic
from tests.micro import micro_model
from vit_interp.analysis.circuits import CircuitSettings, matched_random_latents, per_class_circuits
from vit_interp.errors import ConfigError
from vit_interp.gating import HeadGate
from vit_interp.sae.latent_stats import latent_statistics
from vit_interp.steering import SteeringSpec
from vit_interp.steering.sweep import SweepEngine


@pytest.fixture(scope="module")
def system():
    model = micro_model(image_mean=None)
    torch.manual_seed(0)
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        gate.decision["1"].bias.copy_(torch.tensor([0.2, -0.2, 0.1, 0.0]))
    sae = random_sae()
    train, val, test = synthetic(80, 1), synthetic(60, 2), synthetic(60, 3)
    train.split, test.split = "train", "test"
    stats = latent_statistics(model, sae, train, progress=False)
    return model, gate, sae, stats, SweepEngine(model, gate, sae, val, progress=False), SweepEngine(model, gate, sae, test, progress=False)


def test_every_class_gets_a_row_that_follows_the_rule(system, tmp_path) -> None:
    model, gate, sae, stats, val, test = system
    settings = CircuitSettings(alphas=(0.5, 4.0), n_latents=2, min_class_rate=0.0, n_random=2)
    table = per_class_circuits(val, test, stats, settings, progress=False)
    assert [r.name for r in table.rows] == test.data.class_names
    for c, row in enumerate(table.rows):
        base = row.val_curve[0]
        eligible = [p for p in row.val_curve if p["accuracy"] >= base["accuracy"] - settings.tolerance]
        assert row.alpha in [p["alpha"] for p in eligible]
        assert next(p for p in row.val_curve if p["alpha"] == row.alpha)["usage"] == min(p["usage"] for p in eligible)
        rows = test.data.labels == c
        steered = test.run(SteeringSpec(row.latents, "scale", row.alpha), rows=rows)
        assert row.steered_accuracy["mean"] == pytest.approx(float(steered.correct[rows].double().mean()))
        assert row.steered_usage["mean"] == pytest.approx(float(steered.usage[rows].mean()))
        assert row.delta_accuracy["low"] <= row.delta_accuracy["mean"] <= row.delta_accuracy["high"]
        assert 0 < row.mode_share <= 1 and len(row.mode_mask) == 4
        assert set(row.controls) == {"random_latents", "random_masks", "fixed_subset", "ceiling", "floor", "off_target"}
        assert len(row.controls["fixed_subset"]["heads"]) == sum(row.mode_mask)
        low, high = row.controls["random_latents"]["usage_range"]
        assert low <= row.controls["random_latents"]["usage"] <= high
    text = table.to_markdown()
    assert all(f"| {name} |" in text for name in test.data.class_names)
    assert table.to_csv().count("\n") == 1 + len(table.rows)
    from vit_interp.analysis.steering_figures import before_after_figure, dose_response_figure, kept_heads_heatmap
    from vit_interp.io import save_figure_atomic

    for make in (before_after_figure, kept_heads_heatmap, dose_response_figure):
        assert save_figure_atomic(make(table), tmp_path / f"{make.__name__}.png").read_bytes()[:4] == b"\x89PNG"


def test_matched_random_latents_avoid_the_chosen_and_match_activation(system) -> None:
    _, _, _, stats, _, _ = system
    chosen = stats.class_selective_latents(0, 2)
    picks = matched_random_latents(stats, 0, chosen, torch.Generator().manual_seed(0))
    assert len(picks) == len(chosen) and not set(picks) & set(chosen) and len(set(picks)) == len(picks)
    assert all(stats.fire_counts[j] > 0 for j in picks)


def test_test_split_statistics_are_refused(system) -> None:
    model, gate, sae, _, val, test = system
    test_stats = latent_statistics(model, sae, test.data, progress=False)
    with pytest.raises(ConfigError, match="leak"):
        per_class_circuits(val, test, test_stats, progress=False)
