"""Controls for gates: exhaustive fixed subsets, random masks at matched usage, floor and ceiling."""

from __future__ import annotations

import math

import pytest
import torch

from tests.micro import micro_model
from tests.unit.test_gating import synthetic_dataset
from vit_interp.data import prepare
from vit_interp.errors import ConfigError
from vit_interp.gating import HeadGate
from vit_interp.gating.baselines import (
    all_subsets,
    best_subset_of_each_size,
    gate_controls,
    random_mask_correctness,
    subset_correctness,
)


def correct_with_mask(model, data, layer, mask) -> torch.Tensor:
    hooks = [(f"blocks.{layer}.attn.hook_head_mask", lambda m, hook: m * mask)]
    with torch.no_grad():
        return model.run_with_hooks(prepare(data.images, model.cfg), fwd_hooks=hooks).argmax(-1) == data.labels


def test_all_subsets_is_every_mask_ordered_by_size() -> None:
    subsets = all_subsets(4)
    assert subsets.shape == (16, 4) and len({tuple(r) for r in subsets.tolist()}) == 16
    assert subsets[0].sum() == 0 and subsets[-1].sum() == 4
    assert torch.all(subsets.sum(-1).diff() >= 0)
    with pytest.raises(ConfigError, match="not feasible"):
        all_subsets(20)


def test_subset_correctness_equals_masking_by_hand() -> None:
    model = micro_model(image_mean=None)
    data = synthetic_dataset(n=48)
    subsets, correct = subset_correctness(model, 1, data, batch_size=16, progress=False)
    assert correct.shape == (16, 48)
    for row in (0, 5, 11, 15):
        assert torch.equal(correct[row], correct_with_mask(model, data, 1, subsets[row]))
    best = best_subset_of_each_size(subsets, correct, [1, 4])
    assert best[4] == 15 and subsets[best[1]].sum() == 1
    singles = (subsets.sum(-1) == 1).nonzero().squeeze(1)
    assert correct[best[1]].sum() == correct[singles].sum(-1).max()


def test_random_masks_at_usage_one_and_zero_are_the_ceiling_and_floor() -> None:
    model = micro_model(image_mean=None)
    data = synthetic_dataset(n=64)
    everything, usage_all = random_mask_correctness(model, {1: 1.0}, data, n_repeats=2, progress=False)
    nothing, usage_none = random_mask_correctness(model, {1: 0.0}, data, n_repeats=2, progress=False)
    assert torch.equal(everything, correct_with_mask(model, data, 1, torch.ones(4)).double())
    assert torch.equal(nothing, correct_with_mask(model, data, 1, torch.zeros(4)).double())
    assert torch.all(usage_all == 1) and torch.all(usage_none == 0)
    half, usage_half = random_mask_correctness(model, {0: 0.5, 1: 0.5}, data, n_repeats=20, seed=3, progress=False)
    assert abs(float(usage_half.mean()) - 0.5) < 0.05
    again, _ = random_mask_correctness(model, {0: 0.5, 1: 0.5}, data, n_repeats=20, seed=3, progress=False)
    assert torch.equal(half, again), "seeded"
    with pytest.raises(ConfigError, match="bad random-mask setting"):
        random_mask_correctness(model, {5: 0.5}, data, progress=False)
    with pytest.raises(ConfigError, match="usage_per_layer is empty"):
        random_mask_correctness(model, {}, data, progress=False)


def test_gate_controls_report_every_control_and_class() -> None:
    model = micro_model(image_mean=None)
    test, selection = synthetic_dataset(n=64, seed=1), synthetic_dataset(n=64, seed=2)
    torch.manual_seed(0)
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        gate.decision["1"].bias.copy_(torch.tensor([3.0, -3.0, 3.0, 0.0]))  # keeps heads 0 and 2, head 3 for some images
    controls = gate_controls(model, gate, test, selection=selection, n_random=3, progress=False)
    names = [row.name for row in controls.rows]
    gate_row = controls.row("gate")
    sizes = sorted({math.floor(gate_row.usage * 4), math.ceil(gate_row.usage * 4)})
    assert names == ["ceiling (no pruning)", "gate", "random masks"] + [f"best fixed subset, {s} heads" for s in sizes] + [
        "floor (gated heads all pruned)"]
    ceiling, floor = controls.row("ceiling (no pruning)"), controls.row("floor (gated heads all pruned)")
    assert ceiling.accuracy == pytest.approx(float(correct_with_mask(model, test, 1, torch.ones(4)).double().mean()))
    assert floor.accuracy == pytest.approx(float(correct_with_mask(model, test, 1, torch.zeros(4)).double().mean()))
    assert abs(controls.row("random masks").usage - gate_row.usage) < 0.1
    subsets, chosen_on = subset_correctness(model, 1, selection, progress=False)
    for size in sizes:
        best = subsets[best_subset_of_each_size(subsets, chosen_on, [size])[size]]
        fixed = controls.row(f"best fixed subset, {size} heads")
        assert fixed.accuracy == pytest.approx(float(correct_with_mask(model, test, 1, best).double().mean()))
        assert str(best.nonzero().squeeze(1).tolist()) in fixed.detail
    table = controls.to_markdown()
    assert all(f"| {name} |" in table for name in test.class_names)
    assert len(controls.to_dict()["rows"]) == len(names)


def test_usage_curve_trains_a_gate_per_target_beside_its_controls(tmp_path) -> None:
    from vit_interp.analysis.gating_figures import head_usage_heatmap, usage_curve_figure
    from vit_interp.gating.curve import usage_curve
    from vit_interp.gating.training import GateTrainConfig
    from vit_interp.io import save_figure_atomic

    model = micro_model(image_mean=None)
    train, test, selection = synthetic_dataset(n=128, seed=0), synthetic_dataset(n=64, seed=1), synthetic_dataset(n=64, seed=2)
    config = GateTrainConfig(epochs=8, batch_size=64, lr=1e-2)
    curve = usage_curve(model, train, test, selection, targets=[0.25, 0.75], config=config, n_random=2, progress=False)
    gates = curve.of_kind("gate")
    assert [p["target"] for p in gates] == [0.25, 0.75]
    assert gates[0]["usage"] < gates[1]["usage"], "a lower target gives a lower usage"
    randoms = curve.of_kind("random")
    assert all(abs(r["usage"] - g["usage"]) < 0.15 for r, g in zip(randoms, gates))
    assert [round(p["usage"] * 4) for p in curve.of_kind("fixed")] == [1, 2, 3]
    assert len(curve.of_kind("ceiling")) == len(curve.of_kind("floor")) == 1
    assert curve.to_csv().count("\n") == len(curve.points) + 1 and "| gate | 0.25 |" in curve.to_markdown()
    png = save_figure_atomic(usage_curve_figure(curve), tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from vit_interp.gating.evaluation import evaluate_gate

    heatmap = head_usage_heatmap(evaluate_gate(model, curve.gates[0.25], test, progress=False))
    assert save_figure_atomic(heatmap, tmp_path / "heat.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="targets must be"):
        usage_curve(model, train, test, targets=[0.0], progress=False)
