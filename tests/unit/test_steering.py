"""Steering: the spec, the wiring (SAE at the gate's input, gate from its output), bad input."""

from __future__ import annotations

import pytest
import torch

from tests.micro import images_for, micro_model
from vit_interp.errors import ConfigError, LatentIndexError
from vit_interp.gating import HeadGate
from vit_interp.steering import SteeringSpec, steer

HOOK = "blocks.1.hook_resid_pre"


def random_sae(d_in: int = 32, d_sae: int = 48, k: int = 6, seed: int = 0):
    import sae_lens

    torch.manual_seed(seed)
    sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    sae.cfg.metadata.hook_name = HOOK
    return sae


@pytest.fixture(scope="module")
def setup():
    model = micro_model()
    torch.manual_seed(0)
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        gate.decision["1"].bias.copy_(torch.tensor([0.2, -0.2, 0.1, 0.0]))
    return model, gate, random_sae(), images_for(model, batch=16)


def test_spec_modes_and_rows() -> None:
    acts = torch.arange(12.0).view(2, 6)
    assert SteeringSpec([1, 3], "scale", 2.0).apply(acts)[:, [1, 3]].tolist() == [[2.0, 6.0], [14.0, 18.0]]
    assert SteeringSpec([1], "add", -1.0).apply(acts)[:, 1].tolist() == [0.0, 6.0]
    assert SteeringSpec(4, "clamp", 0.5).apply(acts)[:, 4].tolist() == [0.5, 0.5]
    only_second = SteeringSpec([0], "clamp", 9.0).apply(acts, rows=torch.tensor([False, True]))
    assert only_second[:, 0].tolist() == [0.0, 9.0] and torch.equal(only_second[:, 1:], acts[:, 1:])
    assert torch.equal(acts, torch.arange(12.0).view(2, 6)), "the input is never edited in place"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"latents": []}, ConfigError, "at least one latent"),
    ({"latents": [1, 1]}, ConfigError, "distinct"),
    ({"latents": [1], "mode": "scale", "value": 0.0}, ConfigError, "scale factor must be > 0"),
    ({"latents": [1], "mode": "scale", "value": -2.0}, ConfigError, "scale factor must be > 0"),
    ({"latents": [1], "mode": "boost"}, ConfigError, "unknown steering mode"),
    ({"latents": [1], "target": "stream"}, ConfigError, "unknown steering target"),
])
def test_bad_specs(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        SteeringSpec(**kwargs)


def test_unsteered_and_alpha_one_are_bit_identical_to_the_gated_model(setup) -> None:
    model, gate, sae, images = setup
    with torch.no_grad():
        with gate.attached(model):
            clean = model(images)
            clean_masks = gate.last_masks[1].clone()
        for spec in (None, SteeringSpec(list(range(48)), "scale", 1.0), SteeringSpec([3], "scale", 1.0, "gate+stream")):
            with steer(model, gate, sae, spec) as steering:
                out = model(images)
            assert torch.equal(out, clean), spec
            assert torch.equal(steering.gate.last_masks[1], clean_masks)
    assert torch.equal(model(images).detach(), model(images).detach()) and not model.acts_to_saes, "nothing left behind"


def test_gate_target_changes_decisions_not_the_stream(setup) -> None:
    model, gate, sae, images = setup
    spec = SteeringSpec(list(range(48)), "scale", 4.0)
    with torch.no_grad():
        with steer(model, gate, sae, spec) as steering:
            logits, cache = model.run_with_cache(images)
        masks = steering.gate.last_masks[1]
        # By hand: the gate sees resid + W_dec^T (a' - a) at the CLS token.
        x = cache[HOOK][:, 0]
        acts = sae.encode(x)
        seen = x + sae.decode(acts * 4.0) - sae.decode(acts)
        expected = (gate.decision["1"](seen) > 0).float()
        assert torch.equal(masks, expected)
        assert torch.equal(cache["blocks.1.attn.hook_head_mask"], masks)
        torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"][:, 0], acts * 4.0, atol=1e-5, rtol=1e-5)
        with gate.attached(model):
            unsteered = model(images)
        by_mask = model.run_with_hooks(images, fwd_hooks=[("blocks.1.attn.hook_head_mask", lambda m, hook: m * masks)])
    assert not torch.equal(masks, gate.last_masks[1]), "the steering must change some decision for this test"
    torch.testing.assert_close(logits, by_mask, atol=1e-5, rtol=1e-5)
    assert not torch.equal(logits, unsteered)


def test_gate_plus_stream_also_replaces_the_residual(setup) -> None:
    model, gate, sae, images = setup
    spec = SteeringSpec([0, 1, 2], "clamp", 3.0, target="gate+stream")
    with torch.no_grad(), steer(model, gate, sae, spec):
        _, cache = model.run_with_cache(images)
    x = cache[f"{HOOK}.hook_sae_input"][:, 0]
    acts = sae.encode(x)
    steered = x + sae.decode(SteeringSpec([0, 1, 2], "clamp", 3.0).apply(acts)) - sae.decode(acts)
    torch.testing.assert_close(cache[HOOK][:, 0], steered, atol=1e-5, rtol=1e-5), "the stream carries the steered vector"
    assert torch.equal(cache[HOOK][:, 1:], cache[f"{HOOK}.hook_sae_input"][:, 1:]), "patch tokens untouched"


def test_rows_limit_steering_to_chosen_images(setup) -> None:
    model, gate, sae, images = setup
    spec = SteeringSpec(list(range(48)), "scale", 4.0)
    rows = torch.arange(16) < 8
    with torch.no_grad():
        with steer(model, gate, sae, spec) as steering:
            everyone = model(images)
            steering.only(rows)
            some = model(images)
            with pytest.raises(ConfigError, match="one flag per image"):
                model(images[:3])
        with gate.attached(model):
            clean = model(images)
    assert torch.equal(some[8:], clean[8:]) and torch.equal(some[:8], everyone[:8])


def test_bad_wiring_is_refused(setup) -> None:
    model, gate, sae, images = setup
    elsewhere = random_sae()
    elsewhere.cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    with pytest.raises(ConfigError, match="the gate reads"):
        with steer(model, gate, elsewhere):
            pass
    with pytest.raises(LatentIndexError, match=r"latent ids \[48\] are out of range"):
        with steer(model, gate, sae, SteeringSpec([48], "scale", 2.0)):
            pass
    gate.attach(model)
    try:
        with pytest.raises(ConfigError, match="attached to the model permanently"):
            with steer(model, gate, sae):
                pass
    finally:
        gate.detach(model)
    assert not model.acts_to_saes, "a refused set-up leaves nothing spliced"


def synthetic(n: int = 40, seed: int = 0):
    from vit_interp.data import ImageDataset

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 5, (n,), generator=generator)
    return ImageDataset(images, labels, [f"c{i}" for i in range(5)], "synthetic", "val")


@pytest.mark.parametrize("spec", [
    None,
    SteeringSpec(list(range(48)), "scale", 4.0),
    SteeringSpec([0, 5, 7], "clamp", 2.0),
    SteeringSpec([1, 2], "add", 1.5, target="gate+stream"),
])
def test_sweep_engine_equals_the_naive_steered_forward(setup, spec) -> None:
    from vit_interp.data import prepare
    from vit_interp.steering.sweep import SweepEngine

    model, gate, sae, _ = setup
    data = synthetic()
    engine = SweepEngine(model, gate, sae, data, batch_size=16, progress=False)
    rows = data.labels == 2
    result = engine.run(spec, rows=rows)
    with torch.no_grad(), steer(model, gate, sae, spec, rows=rows) as steering:
        naive = model(prepare(data.images, model.cfg))
        naive_masks = steering.gate.last_masks[1]
    assert torch.equal(result.masks, naive_masks)
    torch.testing.assert_close(result.logits, naive, atol=1e-5, rtol=1e-5)
    assert result.correct.shape == (40,) and 0 <= float(result.usage.mean()) <= 1


def test_sweep_engine_refuses_other_wirings_and_bad_rows(setup) -> None:
    from vit_interp.steering.sweep import SweepEngine

    model, gate, sae, _ = setup
    with pytest.raises(ConfigError, match="one gated layer"):
        SweepEngine(model, HeadGate(32, 4, [0, 1], read_hooks=["blocks.0.hook_resid_pre", HOOK]), sae, synthetic(), progress=False)
    engine = SweepEngine(model, gate, sae, synthetic(), progress=False)
    with pytest.raises(ConfigError, match="one flag per image"):
        engine.run(SteeringSpec([1], "scale", 2.0), rows=torch.ones(3, dtype=torch.bool))
    with pytest.raises(LatentIndexError):
        engine.run(SteeringSpec([99], "scale", 2.0))


def test_class_rows_refuse_unknown_out_of_range_and_empty_classes(setup) -> None:
    from vit_interp.data import ImageDataset
    from vit_interp.errors import ClassIndexError, DataError
    from vit_interp.steering.sweep import SweepEngine

    model, gate, sae, _ = setup
    data = synthetic()
    data = ImageDataset(data.images, data.labels.clamp(max=3), data.class_names, "synthetic", "val")  # class 4 is empty
    engine = SweepEngine(model, gate, sae, data, progress=False)
    assert torch.equal(engine.class_rows("c2"), data.labels == 2) and torch.equal(engine.class_rows(1), data.labels == 1)
    with pytest.raises(ClassIndexError, match="unknown class 'dog'"):
        engine.class_rows("dog")
    with pytest.raises(ClassIndexError, match="out of range; use 0..4"):
        engine.class_rows(7)
    with pytest.raises(DataError, match="class 'c4' has no images"):
        engine.class_rows(4)


def test_latent_sweep_is_every_latent_alone_at_every_value(setup) -> None:
    from vit_interp.steering.sweep import SweepEngine, latent_sweep

    model, gate, sae, _ = setup
    data = synthetic()
    engine = SweepEngine(model, gate, sae, data, progress=False)
    rows = data.labels == 1
    table = latent_sweep(engine, [0, 5], [0.5, 8.0], rows=rows)
    assert [(r["latent"], r["value"]) for r in table] == [(0, 0.5), (0, 8.0), (5, 0.5), (5, 8.0)]
    direct = engine.run(SteeringSpec([5], "scale", 8.0), rows=rows)
    assert table[3]["usage"] == pytest.approx(float(direct.usage[rows].mean()))
    assert table[3]["delta_usage"] == pytest.approx(table[3]["usage"] - float(engine.run(None).usage[rows].mean()))
