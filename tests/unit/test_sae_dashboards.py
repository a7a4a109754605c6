"""Latent statistics equal a brute-force computation; selectivity finds a planted latent; figures save as PNGs."""

from __future__ import annotations

import json
import math
import struct
import time

import numpy as np
import pytest
import torch

from tests.micro import micro_model
from vit_interp.data import ImageDataset
from vit_interp.errors import ClassIndexError, ConfigError, DataError
from vit_interp.sae.dashboards import (latent_dashboard, save_dashboards, save_top_images_grid, summary_figure,
                                       top_images_grid)
from vit_interp.sae.harvest import iter_activations
from vit_interp.errors import LatentIndexError
from vit_interp.sae.latent_stats import LatentStatistics, latent_statistics, wilson_lower_bound

sae_lens = pytest.importorskip("sae_lens")

HOOK = "blocks.1.hook_resid_pre"
PLANTED = 7  # the latent made specific to class 0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_dataset(n_per_class: int = 12, n_classes: int = 5, seed: int = 0) -> ImageDataset:
    """16x16 RGB noise; class 0 images are much brighter, so they separate at any layer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 3, 16, 16, generator=generator) * 0.5
    images[labels == 0] += 0.5
    order = torch.randperm(len(labels), generator=generator)  # interleave classes across batches
    return ImageDataset(images[order], labels[order], [f"class{c}" for c in range(n_classes)], "synthetic", "train")


def planted_sae(model, dataset: ImageDataset):
    """A random TopK SAE whose latent PLANTED fires exactly on class 0 (projection on the class-mean direction)."""
    torch.manual_seed(0)
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=48, k=4))
    sae.cfg.metadata.hook_name = HOOK
    with torch.no_grad():
        rows = torch.cat(list(iter_activations(model, HOOK, dataset.images, "cls", progress=False))) - sae.b_dec
        mine = dataset.labels == 0
        direction = rows[mine].mean(0) - rows[~mine].mean(0)
        direction /= direction.norm()
        projection = rows @ direction
        threshold = projection[~mine].max()
        assert projection[mine].min() > threshold, "the synthetic classes must be separable by construction"
        sae.W_enc[:, PLANTED] = 1000 * direction
        sae.b_enc[PLANTED] = -1000 * threshold
    return sae


@pytest.fixture(scope="module")
def setup():
    model = micro_model()
    dataset = synthetic_dataset()
    return model, dataset, planted_sae(model, dataset)


@pytest.fixture(scope="module")
def stats(setup) -> LatentStatistics:
    model, dataset, sae = setup
    return latent_statistics(model, sae, dataset, top_k=5, batch_size=7, progress=False)


def brute_force(model, sae, dataset: ImageDataset, tokens: str, top_k: int, edges: np.ndarray) -> dict:
    """Every statistic from the full [images, positions, latents] activation tensor, one latent at a time."""
    with torch.no_grad():
        rows = torch.cat(list(iter_activations(model, HOOK, dataset.images, tokens, batch_size=len(dataset), progress=False)))
        acts = sae.encode(rows).abs().reshape(len(dataset), -1, sae.cfg.d_sae).double()
    per_image = acts.amax(dim=1)  # [images, latents]
    n_classes, d_sae = dataset.n_classes, sae.cfg.d_sae
    out = {"acts": acts, "per_image": per_image, "top": [], "hist": np.zeros((d_sae, len(edges) - 1), dtype=np.int64),
           "class_fire": torch.zeros(n_classes, d_sae, dtype=torch.int64), "class_sum": torch.zeros(n_classes, d_sae, dtype=torch.float64)}
    for j in range(d_sae):
        column = per_image[:, j]
        fired = [(float(v), i) for i, v in enumerate(column.tolist()) if v > 0]
        out["top"].append(sorted(fired, key=lambda pair: (-pair[0], pair[1]))[:top_k])
        firing = column[column > 0].numpy()
        out["hist"][j] = np.histogram(np.clip(firing, edges[0], edges[-1]), bins=edges)[0]
        for c in range(n_classes):
            in_class = column[dataset.labels == c]
            out["class_fire"][c, j] = int((in_class > 0).sum())
            out["class_sum"][c, j] = float(in_class.sum())
    counts = torch.bincount(dataset.labels, minlength=n_classes).double()
    means = out["class_sum"] / counts[:, None]
    out["share"] = means / means.sum(0, keepdim=True)
    return out


@pytest.mark.parametrize("tokens", ["cls", "patches", "all"])
def test_one_pass_statistics_equal_brute_force(setup, tokens: str) -> None:
    model, dataset, sae = setup
    top_k = 5
    stats = latent_statistics(model, sae, dataset, tokens=tokens, top_k=top_k, batch_size=7, n_bins=40,
                              hist_range=(1e-2, 1e2), progress=False)  # 7: batches straddle classes, last one short
    expected = brute_force(model, sae, dataset, tokens, top_k, stats.hist_edges.numpy())
    positions = expected["acts"].shape[1]
    assert stats.n_images == len(dataset) and stats.n_rows == len(dataset) * positions
    for j in range(stats.d_sae):
        want = expected["top"][j]
        got_images = stats.top_images[j].tolist()
        assert got_images[: len(want)] == [i for _, i in want] and all(i == -1 for i in got_images[len(want):])
        torch.testing.assert_close(stats.top_values[j, : len(want)].double(), torch.tensor([v for v, _ in want], dtype=torch.float64))
        for slot, (value, image) in enumerate(want):  # the recorded position is where the image peaks
            position = int(stats.top_positions[j, slot]) - (stats.n_prefix if tokens == "patches" else 0)
            assert float(expected["acts"][image, position, j]) == pytest.approx(value)
            assert int(stats.top_labels[j, slot]) == int(dataset.labels[image])
    assert torch.equal(stats.class_fire_counts, expected["class_fire"])
    torch.testing.assert_close(stats.class_act_sums, expected["class_sum"])
    assert np.array_equal(stats.hist_counts.numpy(), expected["hist"])
    assert torch.equal(stats.row_fire_counts, (expected["acts"] != 0).sum(dim=(0, 1)))
    torch.testing.assert_close(stats.class_share, expected["share"], equal_nan=True)
    alive = stats.fire_counts > 0
    assert torch.equal(stats.top_class[alive], expected["share"][:, alive].argmax(0))
    assert torch.equal(stats.dead_latents, torch.nonzero(expected["per_image"].amax(0) == 0).flatten())
    fire = (expected["per_image"] > 0).sum(0)
    for c in range(dataset.n_classes):
        share = expected["share"][c]
        want = sorted(torch.nonzero(fire >= 3).flatten().tolist(), key=lambda j: (-float(share[j]), -int(fire[j]), j))
        assert stats.class_selective_latents(c, n=4, min_firing=3) == want[:4]


def test_batch_size_does_not_change_the_statistics(setup, stats: LatentStatistics) -> None:
    model, dataset, sae = setup
    whole = latent_statistics(model, sae, dataset, top_k=5, batch_size=len(dataset), progress=False)
    for name in ("top_values", "top_images", "top_positions", "class_fire_counts", "hist_counts", "row_fire_counts"):
        assert torch.equal(getattr(whole, name), getattr(stats, name)), name
    torch.testing.assert_close(whole.class_act_sums, stats.class_act_sums)


def test_planted_latent_is_the_most_selective_for_its_class(stats: LatentStatistics) -> None:
    assert stats.class_selective_latents(0, n=3)[0] == PLANTED
    assert stats.class_selective_latents("class0", n=1) == [PLANTED]
    assert int(stats.top_class[PLANTED]) == 0 and float(stats.selectivity[PLANTED]) == pytest.approx(1.0)
    assert int(stats.fire_counts[PLANTED]) == int((stats.class_counts[0]))  # every class-0 image, nothing else
    table = stats.selectivity_table(min_firing=5)
    first = table.rows[0]
    assert first["latent"] == PLANTED and first["top_class"] == "class0" and first["precision"] == 1.0
    assert first["class_firing_rates"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert first["score_se"] == 0.0 and first["precision_low"] == pytest.approx(wilson_lower_bound(12, 12))
    assert 0.7 < wilson_lower_bound(12, 12) < 0.8 and math.isnan(wilson_lower_bound(0, 0))  # 12/12: >= 0.76, not 1
    assert stats.class_selective_latents(0, n=48, min_firing=1, min_class_rate=1.0)[0] == PLANTED
    assert all(int(stats.class_fire_counts[0, j]) == 12 for j in stats.class_selective_latents(0, n=48, min_class_rate=1.0))
    assert [row["score"] for row in table.rows] == sorted((row["score"] for row in table.rows), reverse=True)
    assert all(row["n_firing"] >= 5 for row in table.rows)
    json.dumps(table.to_dict())  # JSON-ready
    markdown = table.to_markdown(max_rows=3)
    assert "| latent | top class | score |" in markdown and f"| {PLANTED} | class0 | 1.000 |" in markdown
    assert len(markdown.splitlines()) == 4 + 3


def test_score_standard_error_agrees_with_a_stratified_bootstrap(setup, stats: LatentStatistics) -> None:
    model, dataset, sae = setup
    per_image = brute_force(model, sae, dataset, "cls", 5, stats.hist_edges.numpy())["per_image"]
    generator = torch.Generator().manual_seed(0)
    members = [torch.nonzero(dataset.labels == c).flatten() for c in range(dataset.n_classes)]
    means = []
    for _ in range(2000):  # resample images within each class, as the delta method holds class sizes fixed
        picks = [m[torch.randint(len(m), (len(m),), generator=generator)] for m in members]
        means.append(torch.stack([per_image[p].mean(0) for p in picks]))
    shares = torch.stack(means)
    shares = shares / shares.sum(1, keepdim=True)  # [resamples, classes, latents]
    frequent = torch.nonzero(stats.fire_counts >= 20).flatten()
    assert len(frequent) >= 3
    for j in frequent.tolist():
        top = int(stats.top_class[j])
        assert float(stats.class_share_se[top, j]) == pytest.approx(float(shares[:, top, j].std()), rel=0.25)


def test_save_and_load_round_trip(tmp_path, setup, stats: LatentStatistics) -> None:
    folder = stats.save(tmp_path / "stats")
    loaded = LatentStatistics.load(folder)
    for name, value in vars(stats).items():
        other = getattr(loaded, name)
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, name
    assert loaded.selectivity_table().to_dict() == stats.selectivity_table().to_dict()
    _, dataset, _ = setup
    top_images_grid(loaded, dataset, PLANTED)  # draws from the loaded statistics alone
    with pytest.raises(DataError, match="LatentStatistics.save"):
        LatentStatistics.load(tmp_path / "nothing")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_bad_inputs_give_one_line_typed_errors(setup, stats: LatentStatistics) -> None:
    model, dataset, sae = setup
    with pytest.raises(LatentIndexError) as error:
        latent_dashboard(stats, dataset, 48)
    assert "0..47" in one_line(error)
    with pytest.raises(IndexError):  # typed errors subclass what a user would catch
        stats.check_latent(-1)
    with pytest.raises(ClassIndexError) as error:
        stats.class_selective_latents("cat")
    assert "class0" in one_line(error)
    with pytest.raises(DataError) as error:
        latent_statistics(model, sae, dataset.images, progress=False)
    assert "ImageDataset" in one_line(error)
    unlabelled = ImageDataset(dataset.images, torch.full_like(dataset.labels, -1), dataset.class_names)
    with pytest.raises(DataError, match="class indices"):
        latent_statistics(model, sae, unlabelled, progress=False)
    with pytest.raises(DataError) as error:
        top_images_grid(stats, synthetic_dataset(seed=1), 0)
    assert "not the one" in one_line(error)
    with pytest.raises(ConfigError, match="unknown token selection"):
        latent_statistics(model, sae, dataset, tokens="patch", progress=False)
    narrow = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=16, d_sae=8, k=2))
    with pytest.raises(ConfigError) as error:
        latent_statistics(model, narrow, dataset, progress=False)
    assert "hook_name" in one_line(error)
    narrow.cfg.metadata.hook_name = HOOK
    with pytest.raises(ConfigError, match="d_in=16"):
        latent_statistics(model, narrow, dataset, progress=False)
    test_stats = latent_statistics(model, sae, ImageDataset(dataset.images, dataset.labels, dataset.class_names, split="test"),
                                   top_k=2, progress=False)
    with pytest.raises(DataError) as error:
        test_stats.class_selective_latents(0)
    assert "train" in one_line(error)
    assert test_stats.class_selective_latents(0, n=1, allow_test=True) == [PLANTED]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_figures_are_saved_as_png(tmp_path, setup, stats: LatentStatistics) -> None:
    model, dataset, sae = setup
    files = save_dashboards(stats, dataset, tmp_path / "dash")  # default latents: each class's most selective
    names = {path.name for path in files}
    assert {"summary.png", "selectivity.md", "selectivity.json", f"latent_{PLANTED}.png"} <= names
    for path in files:
        if path.suffix == ".png":
            width, height = png_size(path)
            assert width > 300 and height > 300
    assert not list((tmp_path / "dash").glob(".*.tmp")), "temporary files are renamed away"
    patch_stats = latent_statistics(model, sae, dataset, tokens="patches", top_k=4, progress=False)
    grid = save_top_images_grid(patch_stats, dataset, int(patch_stats.fire_counts.argmax()), tmp_path / "grid.png", n=4)
    assert png_size(grid)[0] > 100
    dead = int(patch_stats.dead_latents[0]) if len(patch_stats.dead_latents) else None
    if dead is not None:  # a latent that never fires still draws (empty panels), it does not crash
        assert latent_dashboard(patch_stats, dataset, dead) is not None
    assert summary_figure(patch_stats, n_per_class=2).axes


def test_shipped_model_on_fashion_mnist(tmp_path) -> None:
    from vit_interp import HookedViT
    from vit_interp.data import load_dataset

    try:
        test = load_dataset("fashion-mnist", "test", download=False)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    started = time.perf_counter()
    model = HookedViT.from_pretrained("fashion-mnist-vit")
    torch.manual_seed(0)
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=96, d_sae=768, k=16))
    sae.cfg.metadata.hook_name = "blocks.5.hook_resid_pre"
    data = test.head(500)
    stats = latent_statistics(model, sae, data, progress=False)
    assert int(stats.class_counts.sum()) == 500 and stats.n_classes == 10
    assert int(stats.fire_counts.sum()) <= 16 * 500  # TopK: at most k latents per CLS row
    latent = stats.class_selective_latents("Trouser", n=1, min_firing=1, allow_test=True)[0]
    width, _ = png_size(save_top_images_grid(stats, data, latent, tmp_path / "grid.png"))
    assert width > 100
    assert math.isfinite(float(stats.selectivity[latent]))
    assert time.perf_counter() - started < 30
