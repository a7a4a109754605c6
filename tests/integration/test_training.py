"""Classifier training: learns, is deterministic, resumes exactly; evaluation reports every class with CIs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vit_interp.training as training
from vit_interp import HookedViT, ViTConfig
from vit_interp.data import load_dataset
from vit_interp.data.fashion_mnist import DEBIAN_DIR
from vit_interp.errors import ConfigError
from vit_interp.training import TrainConfig, evaluate, learning_rate, train_classifier

needs_data = pytest.mark.skipif(not Path(DEBIAN_DIR).is_dir(), reason="needs Debian's dataset-fashion-mnist (make test installs it)")


@pytest.fixture(scope="module")
def small_data():
    train = load_dataset("fashion-mnist", "train").head(3000)
    test = load_dataset("fashion-mnist", "test").head(1000)
    return train, test


def tiny_model(seed: int = 0) -> HookedViT:
    cfg = ViTConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, image_size=28, patch_size=7, in_channels=1,
                    n_classes=10, image_mean=(0.286,), image_std=(0.353,), seed=seed)
    return HookedViT(cfg)


SETTINGS = TrainConfig(epochs=2, batch_size=100, lr=2e-3, warmup_epochs=0.5, seed=5)


@needs_data
def test_micro_training_learns_well_above_chance(small_data) -> None:
    train, test = small_data
    model = tiny_model()
    quick = TrainConfig(epochs=4, batch_size=64, lr=3e-3, warmup_epochs=0.5, max_shift=0, flip=False)
    history = train_classifier(model, train, quick, progress=False)
    result = evaluate(model, test, n_resamples=200, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert result.accuracy > 0.55, result.to_markdown()  # chance is 0.10
    assert result.ci_low <= result.accuracy <= result.ci_high
    assert len(result.per_class) == 10 and sum(c.n for c in result.per_class) == 1000
    assert "| Ankle boot |" in result.to_markdown()


@needs_data
def test_same_seed_gives_bit_identical_weights_and_resume_equals_uninterrupted(small_data, tmp_path, monkeypatch) -> None:
    train = small_data[0].head(600)
    uninterrupted = tiny_model()
    train_classifier(uninterrupted, train, SETTINGS, out_dir=tmp_path / "full", progress=False)
    repeat = tiny_model()
    train_classifier(repeat, train, SETTINGS, progress=False)
    for a, b in zip(uninterrupted.state_dict().values(), repeat.state_dict().values()):
        assert torch.equal(a, b)

    real_save = training._save_checkpoint

    def crash_after_first_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # the process dies right after epoch 1's checkpoint

    monkeypatch.setattr(training, "_save_checkpoint", crash_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(tiny_model(), train, SETTINGS, out_dir=tmp_path / "cut", progress=False)
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = tiny_model(seed=99)  # different init: everything must come from the checkpoint
    history = train_classifier(resumed, train, SETTINGS, out_dir=tmp_path / "cut", resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert not list((tmp_path / "cut").glob("*.tmp")), "no temporary files left behind"

    with pytest.raises(ConfigError, match="different settings"):
        train_classifier(tiny_model(), train, TrainConfig(epochs=3, batch_size=100), out_dir=tmp_path / "cut", resume=True, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_classifier(tiny_model(), train, SETTINGS, out_dir=tmp_path / "none", resume=True, progress=False)


def test_learning_rate_schedule() -> None:
    rates = [learning_rate(step, 100, 10, 1.0) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 1e-3


@needs_data
def test_class_count_mismatch_is_refused(small_data) -> None:
    model = HookedViT(ViTConfig(n_layers=1, d_model=16, n_heads=2, image_size=28, patch_size=7, in_channels=1, n_classes=3))
    with pytest.raises(ConfigError, match="training set has 10 classes but the model 3"):
        train_classifier(model, small_data[0], SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="has 10 classes but the model 3"):
        evaluate(model, small_data[1], progress=False)
