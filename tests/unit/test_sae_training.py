"""SAE training with sae-lens' trainer, sae-lens-format files, and ``vit-interp train-sae``."""

from __future__ import annotations

import json

import pytest
import sae_lens
import torch

import vit_interp.loading.pretrained as pretrained
from tests.micro import micro_model
from vit_interp.cli import main
from vit_interp.data import ImageDataset
from vit_interp.errors import ConfigError, DataError, UnknownHookError, VitInterpError
from vit_interp.sae import (
    ARCHITECTURES,
    SAETrainConfig,
    available_saes,
    harvest_to_disk,
    load_sae,
    save_sae,
    train_sae,
)

HOOK = "blocks.1.hook_resid_pre"
INFERENCE_CLASS = {"topk": "TopKSAE", "standard": "StandardSAE", "batchtopk": "JumpReLUSAE", "jumprelu": "JumpReLUSAE",
                   "matryoshka": "JumpReLUSAE"}


def tiny(architecture: str = "topk", **overrides) -> SAETrainConfig:
    fields = dict(architecture=architecture, expansion_factor=2, k=4, batch_size=32, epochs=2, seed=0)
    return SAETrainConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def model():
    return micro_model()


@pytest.fixture(scope="module")
def images():
    return torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def test_config_builds_sae_lens_configs_with_the_pitfalls_handled() -> None:
    config = SAETrainConfig(lr=2e-3, batch_size=100, epochs=3, warmup_fraction=0.1)
    trainer = config.trainer_config(n_rows=1000)
    assert trainer.lr_end == pytest.approx(2e-4), "lr_end defaults to lr/10 (sae-lens asserts it is set)"
    assert trainer.train_batch_size_samples == 100 and trainer.total_training_samples == 3000
    assert trainer.total_training_steps == 30 and trainer.lr_warm_up_steps == 3
    assert trainer.dead_feature_window == 10 and trainer.feature_sampling_window == 20, "window scaled to 30 steps"
    assert trainer.checkpoint_path is None and not trainer.save_final_checkpoint and not trainer.logger.log_to_wandb
    assert trainer.n_batches_for_norm_estimate == 10, "about one epoch of batches"
    assert SAETrainConfig(batch_size=64).trainer_config(10_000_000).dead_feature_window == 1000
    assert SAETrainConfig(samples=50, batch_size=64).total_samples(10) == 64, "at least one whole batch"
    sae_cfg = config.sae_config(d_in=32, metadata={"hook_name": HOOK})
    assert (type(sae_cfg).__name__, sae_cfg.d_sae, sae_cfg.k, sae_cfg.metadata.hook_name) == ("TopKTrainingSAEConfig", 256, 16, HOOK)
    assert sae_cfg.normalize_activations == "expected_average_only_in"
    standard = SAETrainConfig(architecture="standard", d_sae=48, l1_coefficient=3.0).sae_config(32, steps=200)
    assert (standard.d_sae, standard.l1_coefficient, standard.l1_warm_up_steps) == (48, 3.0, 10)
    matryoshka = SAETrainConfig(architecture="matryoshka", d_sae=64, k=4).sae_config(32)
    assert matryoshka.matryoshka_widths == [8, 16, 32, 64]


@pytest.mark.parametrize("kwargs, message", [
    (dict(architecture="gated"), r"unknown SAE architecture 'gated'; choose one of \['topk'"),
    (dict(epochs=2, samples=100), "give either epochs or samples, not both"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(lr=-1.0), "lr must be positive"),
    (dict(normalize_activations="layer_norm"), "unknown normalize_activations 'layer_norm'"),
])
def test_bad_settings_are_one_line_config_errors(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        SAETrainConfig(**kwargs)
    assert "\n" not in str(error.value)


def test_k_and_matryoshka_widths_are_checked_against_d_sae() -> None:
    with pytest.raises(ConfigError, match="k=64 is larger than d_sae=32"):
        SAETrainConfig(d_sae=32, k=64).sae_config(16)
    with pytest.raises(ConfigError, match=r"matryoshka_widths \[8, 4, 32\] must increase strictly and end at d_sae=32"):
        SAETrainConfig(architecture="matryoshka", d_sae=32, k=2, matryoshka_widths=[8, 4, 32]).sae_config(16)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_trains_saves_and_loads_with_plain_sae_lens(tmp_path, model, images, architecture) -> None:
    sae, summary = train_sae(model, HOOK, images, tiny(architecture), tokens="patches", eval_data=images[:8], progress=False)
    assert type(sae).__name__ == INFERENCE_CLASS[architecture], "returned in inference form"
    assert summary["steps"] == 40 and summary["n_train_rows"] == 640 and len(summary["history"]) == 40
    assert summary["history"][-1]["step"] == 40 and "mse_loss" in summary["history"][0]
    assert set(summary["held_out"]) == {"explained_variance", "mse", "l0", "dead_fraction", "n_rows"}
    assert summary["held_out"]["n_rows"] == 8 * 16
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.metadata.tokens == "patches"
    save_sae(sae, tmp_path / "sae", card={"note": architecture})
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "sae")  # exactly what a sae-lens user would do
    assert type(loaded) is type(sae) and loaded.cfg.metadata.hook_name == HOOK
    x = torch.randn(5, 32)
    torch.testing.assert_close(loaded(x), sae(x))
    assert json.loads((tmp_path / "sae" / "card.json").read_text()) == {"note": architecture}
    assert (tmp_path / "sae" / "README.md").is_file()
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["README.md", "card.json", "cfg.json", "sae_weights.safetensors"]
    ours = load_sae(tmp_path / "sae", model=model)
    torch.testing.assert_close(ours(x), sae(x))


def test_training_is_seeded_and_quiet_without_progress(model, images, capfd) -> None:
    first, summary = train_sae(model, HOOK, images, tiny(), progress=False)
    second, _ = train_sae(model, HOOK, images, tiny(), progress=False)
    third, _ = train_sae(model, HOOK, images, tiny(seed=1), progress=False)
    assert torch.equal(first.W_enc, second.W_enc) and torch.equal(first.W_dec, second.W_dec)
    assert not torch.equal(first.W_enc, third.W_enc)
    assert capfd.readouterr().err == "", "no progress bars with progress=False"
    assert summary["held_out"] is None and summary["n_train_rows"] == 40  # cls: one row per image


def test_rows_that_fit_in_memory_are_harvested_once_for_all_epochs(model, images) -> None:
    calls = []
    model.add_perma_hook("hook_embed", lambda x, hook: calls.append(len(x)))
    cached, _ = train_sae(model, HOOK, images, tiny(), progress=False)
    forwards_cached = sum(calls)
    calls.clear()
    live, _ = train_sae(model, HOOK, images, tiny(memory_cache_mb=0), progress=False)
    model.reset_hooks(including_permanent=True)
    assert forwards_cached <= len(images) + 1, "one harvest reused every epoch (+ a one-image probe of the width)"
    assert sum(calls) > 2 * len(images), "live streaming re-runs the model each epoch"
    assert cached.W_enc.shape == live.W_enc.shape


def test_training_from_disk_shards_checks_they_match(tmp_path, model, images) -> None:
    shards = harvest_to_disk(model, HOOK, images, "patches", tmp_path, dtype="float32", shard_rows=100, progress=False)
    sae, summary = train_sae(model, HOOK, shards, tiny(), tokens="patches", eval_data=shards, progress=False)
    assert summary["n_train_rows"] == 640 and summary["held_out"]["n_rows"] == 640
    with pytest.raises(DataError, match="holds tokens='patches' rows, not 'cls'"):
        train_sae(model, HOOK, shards, tiny(), tokens="cls", progress=False)


def test_load_sae_checks_the_sae_against_the_model(tmp_path, model, images, monkeypatch) -> None:
    sae, _ = train_sae(model, HOOK, images, tiny(), progress=False)
    save_sae(sae, tmp_path / "ok")
    cases = []
    sae.cfg.metadata.hook_name = None
    save_sae(sae, tmp_path / "no_hook")
    cases.append(("no_hook", ConfigError, r"no cfg.metadata.hook_name.*sae.cfg.metadata.hook_name = 'blocks.5.hook_resid_pre'"))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pr"
    save_sae(sae, tmp_path / "bad_hook")
    cases.append(("bad_hook", UnknownHookError, r"unknown hook name 'blocks.1.hook_resid_pr'; did you mean"))
    sae.cfg.metadata.hook_name = "blocks.1.mlp.hook_post"  # width d_mlp = 48, not 32
    save_sae(sae, tmp_path / "wide")
    cases.append(("wide", ConfigError, "SAE d_in 32 does not match the width 48 of 'blocks.1.mlp.hook_post'"))
    for folder, error_type, message in cases:
        with pytest.raises(error_type, match=message) as error:
            load_sae(tmp_path / folder, model=model)
        assert isinstance(error.value, VitInterpError) and "\n" not in str(error.value)
        load_sae(tmp_path / folder)  # without a model nothing is checked
    with pytest.raises(ConfigError, match=r"no SAE 'nope': not a shipped SAE"):
        load_sae("nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{}")
    (tmp_path / "broken" / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="cannot load the SAE in .*broken with sae-lens"):
        load_sae(tmp_path / "broken")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)  # shipped SAEs are folders in vit_interp/pretrained/
    assert available_saes() == ["bad_hook", "broken", "no_hook", "ok", "wide"]
    assert load_sae("ok", model=model).cfg.metadata.hook_name == HOOK


def fake_dataset(split: str, n: int) -> ImageDataset:
    generator = torch.Generator().manual_seed(0 if split == "train" else 1)
    return ImageDataset(torch.rand(n, 3, 16, 16, generator=generator), torch.arange(n) % 5, list("abcde"), "fake", split)


def test_train_sae_command_writes_a_sae_lens_folder_with_card_and_report(tmp_path, model, monkeypatch, capsys) -> None:
    import vit_interp.data

    requested = []

    def load_dataset(name, split="train", root=None, **kwargs):
        requested.append(split)
        return fake_dataset(split, 48 if split == "train" else 16)

    monkeypatch.setattr(vit_interp.data, "load_dataset", load_dataset)
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "sae"
    args = ["train-sae", str(tmp_path / "model"), "--dataset", "fake", "--out", str(out), "--tokens", "patches",
            "--expansion", "2", "--k", "4", "--epochs", "1", "--batch-size", "64", "--seed", "3", "--no-progress",
            "--device", "cpu"]
    assert main(args) == 0
    assert requested == ["train", "test"], "trains on the training split (no validation rows), measures on test"
    sae = sae_lens.SAE.load_from_disk(out)
    assert sae.cfg.metadata.hook_name == HOOK, "default hook: the final block's input"
    card = json.loads((out / "card.json").read_text())
    assert card["command"].startswith("vit-interp train-sae") and card["seed"] == 3 and card["tokens"] == "patches"
    assert card["settings"]["k"] == 4 and card["n_train_images"] == 48 and card["test"]["n_rows"] == 16 * 16
    assert set(card["test"]) == {"explained_variance", "mse", "l0", "dead_fraction", "n_rows"}
    assert "explained variance" in (out / "report.md").read_text() and "## Test metrics" in (out / "README.md").read_text()
    assert "saved SAE to" in capsys.readouterr().out


def test_train_sae_command_user_errors_exit_2_with_one_line(tmp_path, model, monkeypatch, capsys) -> None:
    import vit_interp.data

    monkeypatch.setattr(vit_interp.data, "load_dataset", lambda name, split="train", **kw: fake_dataset(split, 8))
    model.save_pretrained(tmp_path / "model")
    for extra, message in [(["--hook", "blocks.9.hook_resid_pre"], "unknown hook name 'blocks.9.hook_resid_pre'"),
                           (["--k", "100", "--d-sae", "16"], "k=100 is larger than d_sae=16")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["train-sae", str(tmp_path / "model"), "--out", str(tmp_path / "x"), "--no-progress"] + extra)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"vit-interp: error: {message}") and err.count("\n") == 1
