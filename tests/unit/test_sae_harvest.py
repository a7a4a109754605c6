"""Harvesting: token selection, the shuffled training stream, and activation shards on disk."""

from __future__ import annotations

import json

import pytest
import torch

from tests.micro import micro_model
from vit_interp.errors import ConfigError, DataError, UnknownHookError, VitInterpError
from vit_interp.sae.harvest import (
    ActivationShards,
    activation_stream,
    harvest_to_disk,
    hook_width,
    iter_activations,
    rebatch,
    rows_per_image,
    shuffled_blocks,
)

HOOK = "blocks.1.hook_resid_pre"


def one_line(error: BaseException) -> bool:
    return isinstance(error, VitInterpError) and "\n" not in str(error)


def ordered_rows(model, images, tokens, hook=HOOK) -> torch.Tensor:
    return torch.cat(list(iter_activations(model, hook, images, tokens, batch_size=7, progress=False)))


def assert_same_rows_once(rows: torch.Tensor, reference: torch.Tensor) -> None:
    """``rows`` is a permutation of ``reference`` (up to float noise from other batch compositions)."""
    assert rows.shape == reference.shape
    nearest = torch.cdist(rows, reference).argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(len(reference))), "every row exactly once"
    torch.testing.assert_close(rows, reference[nearest], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens, expected_positions", [("cls", [0]), ("patches", list(range(4, 20))), ("all", list(range(20)))])
def test_token_selection_with_distillation_and_register_tokens(tokens, expected_positions) -> None:
    model = micro_model(distill_token=True, n_register_tokens=2)  # CLS, DIST, 2 registers, 16 patches
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        resid = model.run_with_cache(images, names_filter=HOOK)[1][HOOK]
    rows = ordered_rows(model, images, tokens)
    expected = resid[:, expected_positions].reshape(-1, model.cfg.d_model)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=1e-6)
    assert len(rows) == 3 * rows_per_image(model, tokens) and hook_width(model, HOOK, tokens) == 32


def test_bad_selections_are_one_line_errors() -> None:
    model = micro_model()
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ConfigError, match=r"unknown token selection 'patch'; choose one of \['cls', 'patches', 'all'\]") as e:
        next(iter_activations(model, HOOK, images, "patch", progress=False))
    assert one_line(e.value)
    with pytest.raises(UnknownHookError, match=r"unknown hook name 'blocks.1.hook_resid_pr'; did you mean") as e:
        activation_stream(model, "blocks.1.hook_resid_pr", images)
    assert one_line(e.value)
    with pytest.raises(ConfigError, match="needs a \\[batch, pos, d\\] activation"):
        next(iter_activations(model, "blocks.0.attn.hook_z", images, "cls", progress=False))
    with pytest.raises(ConfigError, match="no class token; use tokens='patches'"):
        next(iter_activations(micro_model(class_token=False, pool="mean"), HOOK, images, "cls", progress=False))
    with pytest.raises(DataError, match="expected images \\[n, channels, height, width\\]"):
        activation_stream(model, HOOK, images[0])


def test_stream_is_seeded_and_passes_every_row_once_per_epoch() -> None:
    model = micro_model()
    images = torch.rand(10, 3, 16, 16)
    reference = ordered_rows(model, images, "patches")  # 160 rows
    stream = activation_stream(model, HOOK, images, "patches", batch_size=24, seed=3, buffer_rows=50, harvest_batch_size=4)
    batches = [next(stream) for _ in range(20)]  # 480 rows = 3 epochs, batches crossing epoch ends
    assert all(b.shape == (24, 32) for b in batches)
    rows = torch.cat(batches)
    for epoch in range(3):
        assert_same_rows_once(rows[epoch * 160:(epoch + 1) * 160], reference)
    assert not torch.equal(rows[:160], rows[160:320]), "reshuffled each epoch"
    assert not torch.allclose(rows[:160], reference), "not in harvest order"
    again = activation_stream(model, HOOK, images, "patches", batch_size=24, seed=3, buffer_rows=50, harvest_batch_size=4)
    assert all(torch.equal(next(again), b) for b in batches), "same seed, same stream"
    other = activation_stream(model, HOOK, images, "patches", batch_size=24, seed=4, buffer_rows=50, harvest_batch_size=4)
    assert not torch.equal(next(other), batches[0])
    assert torch.is_grad_enabled() and not rows.requires_grad, "harvest never leaks its no_grad mode"
    finite = list(activation_stream(model, HOOK, images, "cls", batch_size=4, epochs=1))
    assert [len(b) for b in finite] == [4, 4], "finite epochs drop the last partial batch"


def test_shuffle_buffer_memory_is_bounded() -> None:
    chunks = lambda epoch: (torch.full((7, 2), float(i + 10 * epoch)) for i in range(10))  # noqa: E731
    blocks = list(shuffled_blocks(chunks, buffer_rows=20, generator=torch.Generator().manual_seed(0), epochs=2))
    assert max(len(b) for b in blocks) <= 20 + 7 - 1, "a block is at most the buffer plus one chunk"
    assert sum(len(b) for b in blocks) == 140
    batches = list(rebatch(iter(blocks), 16))
    assert all(len(b) == 16 for b in batches) and len(batches) == 140 // 16
    with pytest.raises(DataError, match="activation source is empty"):
        next(shuffled_blocks(lambda epoch: iter([]), 4, torch.Generator()))


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-6), ("float16", 2e-3)])
def test_disk_shards_round_trip(tmp_path, dtype, tolerance) -> None:
    model = micro_model()
    images = torch.rand(9, 3, 16, 16)
    reference = ordered_rows(model, images, "patches")  # 144 rows
    shards = harvest_to_disk(model, HOOK, images, "patches", tmp_path, dtype=dtype, shard_rows=50, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [50, 50, 44]
    assert (manifest["hook_name"], manifest["tokens"], manifest["rows"], manifest["d"], manifest["dtype"]) == (
        HOOK, "patches", 144, 32, dtype)
    assert set(manifest["model"]) == {"config_sha256", "weights_sha256"}
    torch.testing.assert_close(shards.read_all(), reference, atol=tolerance, rtol=tolerance)
    assert shards.read_all().dtype == torch.float32
    reader = ActivationShards(tmp_path, model=model, hook_name=HOOK, tokens="patches")
    stream = reader.batches(batch_size=16, seed=0, buffer_rows=60)
    rows = torch.cat([next(stream) for _ in range(18)])  # two epochs
    for epoch in range(2):
        assert_same_rows_once(rows[epoch * 144:(epoch + 1) * 144], shards.read_all())
    # re-harvesting with bigger shards replaces the folder, stale shards included
    harvest_to_disk(model, HOOK, images, "patches", tmp_path, dtype=dtype, shard_rows=100, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard_00000.safetensors", "shard_00001.safetensors"]


def test_mismatched_or_broken_shards_are_one_line_data_errors(tmp_path) -> None:
    model = micro_model()
    images = torch.rand(4, 3, 16, 16)
    harvest_to_disk(model, HOOK, images, "cls", tmp_path / "a", shard_rows=3, progress=False)
    cases = [
        (dict(hook_name="blocks.0.hook_resid_pre"), "holds 'blocks.1.hook_resid_pre' activations, not 'blocks.0.hook_resid_pre'"),
        (dict(tokens="patches"), "holds tokens='cls' rows, not 'patches'"),
        (dict(model=micro_model(seed=1)), "harvested from a model with other weights"),
        (dict(model=micro_model(d_mlp=64)), "harvested from a model with another config"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError, match=message) as e:
            ActivationShards(tmp_path / "a", **kwargs)
        assert one_line(e.value)
    (tmp_path / "a" / "shard_00001.safetensors").unlink()
    with pytest.raises(DataError, match="lacks shard files \\['shard_00001.safetensors'\\]; harvest again"):
        ActivationShards(tmp_path / "a")
    with pytest.raises(DataError, match="has no manifest.json; harvest into it with harvest_to_disk"):
        ActivationShards(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown shard dtype 'bfloat16'"):
        harvest_to_disk(model, HOOK, images, "cls", tmp_path / "b", dtype="bfloat16")


def test_harvest_stops_at_the_hook_and_leaves_no_hooks_behind() -> None:
    model = micro_model()
    later = []
    model.add_perma_hook("blocks.1.hook_attn_out", lambda act, hook: later.append(1))  # same block, after the hook
    rows = ordered_rows(model, torch.rand(4, 3, 16, 16), "cls")
    assert len(rows) == 4 and later == [], "nothing after the hooked activation runs"
    assert all(not hp.fwd_hooks for name, hp in model.hook_dict.items() if name != "blocks.1.hook_attn_out")
    model(torch.rand(1, 3, 16, 16))
    assert later == [1], "the model still runs normally afterwards"


def test_memory_stream_passes_every_row_once_per_epoch() -> None:
    from vit_interp.sae.harvest import memory_stream

    rows = torch.arange(30.0).repeat(2, 1).T.contiguous()  # 30 distinct rows [30, 2]
    batches = [b for b, _ in zip(memory_stream(rows, batch_size=10, seed=1), range(6))]
    stacked = torch.cat(batches)
    for epoch in range(2):
        assert sorted(stacked[epoch * 30:(epoch + 1) * 30, 0].tolist()) == list(range(30))
    assert not torch.equal(stacked[:30], stacked[30:]) and not torch.equal(stacked[:30], rows)
    assert all(torch.equal(a, b) for a, b in zip(batches, memory_stream(rows, batch_size=10, seed=1)))
    with pytest.raises(ConfigError, match="positive batch_size"):
        memory_stream(rows, batch_size=0)
