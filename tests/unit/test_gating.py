"""Head gates act only through hook_head_mask, attach/detach cleanly, and refuse bad set-ups."""

from __future__ import annotations

import pytest
import torch

from tests.micro import images_for, micro_model
from vit_interp.errors import ConfigError, UnknownHookError
from vit_interp.gating import HeadGate, gumbel_sigmoid, keep_decisions


def test_gumbel_sigmoid_is_hard_with_straight_through_gradient() -> None:
    logits = torch.tensor([[-20.0, 20.0, 0.3]], requires_grad=True)
    sample = gumbel_sigmoid(logits, tau=5.0, generator=torch.Generator().manual_seed(0))
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    assert sample[0, 0] == 0 and sample[0, 1] == 1  # far from the threshold the noise cannot flip it
    sample.sum().backward()
    assert torch.all(logits.grad > 0)  # gradient of the soft sigmoid, not zero
    many = gumbel_sigmoid(torch.zeros(20000), tau=5.0, generator=torch.Generator().manual_seed(1))
    assert abs(float(many.mean()) - 0.5) < 0.02  # logit 0: keep half the time
    assert keep_decisions(torch.tensor([-0.1, 0.0, 0.1])).tolist() == [0.0, 0.0, 1.0]


def test_final_preset_gates_only_the_last_block_through_the_mask_hook() -> None:
    model = micro_model()
    images = images_for(model)
    gate = HeadGate.preset("final", model.cfg)
    assert gate.layers == [1] and gate.read_hooks == {1: "blocks.1.hook_resid_pre"}
    with torch.no_grad():
        clean, clean_cache = model.run_with_cache(images)
        with gate.attached(model):
            gated, cache = model.run_with_cache(images)
        after = model(images)
    expected = keep_decisions(gate.decision["1"](clean_cache["blocks.1.hook_resid_pre"][:, 0]))
    assert torch.equal(cache["blocks.1.attn.hook_head_mask"], expected)
    assert torch.equal(cache["blocks.0.attn.hook_head_mask"], torch.ones(3, 4))
    assert torch.equal(gate.last_masks[1], expected)
    by_hand = model.run_with_hooks(images, fwd_hooks=[("blocks.1.attn.hook_head_mask", lambda m, hook: m * expected)])
    torch.testing.assert_close(gated, by_hand, atol=0, rtol=0)
    assert torch.equal(after, clean), "leaving the context removes the gate"
    assert 0 <= float(gate.usage()) <= 1


def test_adavit_preset_attach_detach_keeps_other_permanent_hooks() -> None:
    model = micro_model(n_layers=3)
    images = images_for(model)
    calls = []
    model.add_perma_hook("blocks.2.hook_resid_post", lambda t, hook: calls.append(1))
    gate = HeadGate.preset("adavit", model.cfg).attach(model)
    assert gate.layers == [1, 2]
    with torch.no_grad():
        gated = model(images)
        model.reset_hooks()  # non-permanent reset: the gate stays
        assert torch.equal(model(images), gated)
        assert set(gate.last_masks) == {1, 2}
        gate.detach(model)
        clean = model(images)
    with torch.no_grad():
        assert not torch.equal(clean, gated) or bool(torch.all(gate.last_masks[1] == 1))
    assert len(calls) == 3, "the other permanent hook survived attach and detach (and attach ran nothing)"
    with pytest.raises(ConfigError, match="not attached"):
        gate.detach(model)


def test_training_mode_samples_and_trains_the_decision_network() -> None:
    model = micro_model()
    images = images_for(model, batch=16)
    gate = HeadGate.preset("final", model.cfg, tau=5.0)
    gate.generator = torch.Generator().manual_seed(0)
    model.train()  # the model's mode decides: sample in training
    with gate.attached(model):
        logits = model(images)
    assert set(gate.last_masks[1].unique().tolist()) <= {0.0, 1.0}
    loss = logits.logsumexp(-1).mean() + gate.usage()
    loss.backward()
    assert gate.decision["1"].weight.grad is not None and gate.decision["1"].weight.grad.abs().sum() > 0


def test_a_custom_read_hook_and_token() -> None:
    model = micro_model()
    gate = HeadGate(model.cfg.d_model, model.cfg.n_heads, [1], read_hooks=["blocks.0.hook_resid_mid"], token=3)
    with torch.no_grad(), gate.attached(model):
        _, cache = model.run_with_cache(images_for(model))
    expected = keep_decisions(gate.decision["1"](cache["blocks.0.hook_resid_mid"][:, 3]))
    assert torch.equal(cache["blocks.1.attn.hook_head_mask"], expected)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda cfg: HeadGate(cfg.d_model + 1, cfg.n_heads, [1]), ConfigError, "gate built for d_model=33"),
        (lambda cfg: HeadGate(cfg.d_model, cfg.n_heads, [5]), ConfigError, r"gated layers \[5\] out of range"),
        (lambda cfg: HeadGate(cfg.d_model, cfg.n_heads, [1], read_hooks=["blocks.1.hook_resid_pst"]), UnknownHookError, "did you mean"),
        (lambda cfg: HeadGate(cfg.d_model, cfg.n_heads, [0], read_hooks=["blocks.0.hook_resid_post"]), ConfigError, "fires after blocks.0.attn.hook_head_mask"),
        (lambda cfg: HeadGate(cfg.d_model, cfg.n_heads, [1], read_hooks=["blocks.1.attn.hook_q"]), ConfigError, "not a \\[batch, pos, d_model\\] residual-stream hook"),
        (lambda cfg: HeadGate(cfg.d_model, cfg.n_heads, [1], token=40), ConfigError, "token 40 is out of range for 17 positions"),
    ],
    ids=["size", "layer", "unknown_hook", "reads_too_late", "wrong_shape", "token"],
)
def test_bad_gates_are_refused_at_attach(make, error, match) -> None:
    model = micro_model()
    with pytest.raises(error, match=match):
        make(model.cfg).attach(model)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(layers=[]), "distinct non-negative"), (dict(layers=[1, 1]), "distinct"),
     (dict(layers=[1], read_hooks=["a", "b"]), "2 read hooks for 1"), (dict(layers=[1], tau=0.0), "tau must be positive")],
)
def test_bad_gate_construction(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        HeadGate(32, 4, **kwargs)
    with pytest.raises(ConfigError, match="unknown gate preset 'all'"):
        HeadGate.preset("all", micro_model().cfg)


def test_read_hook_rules_accept_earlier_streams_and_spliced_sae_outputs() -> None:
    from vit_interp.gating.head_gate import _check_read_hook

    for name, layer in [("blocks.5.hook_resid_pre.hook_sae_output", 5), ("blocks.2.hook_resid_post", 3),
                        ("hook_embed", 0), ("blocks.3.ln1.hook_normalized", 3)]:
        _check_read_hook(name, layer)
    for name, layer in [("blocks.3.hook_resid_mid", 3), ("blocks.4.hook_resid_pre", 3), ("hook_pooled", 3)]:
        with pytest.raises(ConfigError):
            _check_read_hook(name, layer)


def synthetic_dataset(n: int = 256, seed: int = 0):
    from vit_interp.data import ImageDataset

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 5, (n,), generator=generator)
    return ImageDataset(images, labels, [str(c) for c in range(5)], "synthetic", "train")


@pytest.mark.parametrize("target", [0.25, 0.75])
def test_gate_training_reaches_the_target_usage_with_a_frozen_backbone(target) -> None:
    from vit_interp.gating.training import GateTrainConfig, residual_at, train_gate

    model = micro_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = synthetic_dataset()
    torch.manual_seed(0)  # the decision network's init comes from the global RNG: make it order-independent
    gate = HeadGate.preset("final", model.cfg)
    config = GateTrainConfig(target_usage=target, epochs=15, batch_size=64, lr=1e-2, seed=0)
    history = train_gate(model, gate, data, config, progress=False)
    assert len(history) == 15 and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "backbone must stay frozen"
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad(), gate.attached(model):
        model(residual_at(model, data, 1, progress=False), start_at_layer=1)
    assert abs(float(gate.usage()) - target) < 0.15, history[-1]


def test_joint_fine_tuning_trains_backbone_and_gate_together() -> None:
    from vit_interp.gating.training import GateTrainConfig, train_gate

    model = micro_model(image_mean=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = synthetic_dataset(n=128)
    torch.manual_seed(0)
    gate = HeadGate.preset("adavit", model.cfg)
    gate_before = gate.decision["1"].weight.clone()
    config = GateTrainConfig(target_usage=0.5, epochs=2, batch_size=32, lr=1e-2, seed=0, finetune_backbone=True,
                             backbone_lr=1e-3)
    history = train_gate(model, gate, data, config, progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["train_accuracy"] <= 1 for h in history)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert "blocks.0.attn.W_Q" in changed and "embed.W_E" in changed, "the whole backbone trains"
    assert not torch.equal(gate.decision["1"].weight, gate_before)
    assert not model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bad, message", [
    ({"target_usage": 0.0}, r"target_usage must be in \(0, 1\]"),
    ({"target_usage": 1.5}, r"target_usage must be in \(0, 1\]"),
    ({"epochs": 0}, "must be positive"),
    ({"backbone_lr": -1.0}, "must be positive"),
    ({"usage_weight": -0.5}, "usage_weight must be >= 0"),
])
def test_gate_training_refuses_bad_settings(bad, message) -> None:
    from vit_interp.gating.training import GateTrainConfig

    with pytest.raises(ConfigError, match=message):
        GateTrainConfig(**bad)


def test_gate_save_load_round_trip(tmp_path) -> None:
    model = micro_model()
    gate = HeadGate(model.cfg.d_model, model.cfg.n_heads, [1], read_hooks=["blocks.0.hook_resid_post"], token=2, tau=3.0)
    gate.save(tmp_path / "g", card={"note": "x"})
    again = HeadGate.load(tmp_path / "g")
    assert (again.layers, again.read_hooks, again.token, again.tau) == ([1], {1: "blocks.0.hook_resid_post"}, 2, 3.0)
    images = images_for(model)
    with torch.no_grad():
        with gate.attached(model):
            a = model(images)
        with again.attached(model):
            b = model(images)
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match=r"no gate '.*nothing': not a shipped gate \(.*\) and not a folder with gate.json and gate.safetensors"):
        HeadGate.load(tmp_path / "nothing")


def test_evaluate_gate_reports_usage_per_class_and_head() -> None:
    from vit_interp.gating.evaluation import evaluate_gate

    model = micro_model(image_mean=None)
    data = synthetic_dataset(n=64)
    gate = HeadGate.preset("final", model.cfg)
    result = evaluate_gate(model, gate, data, batch_size=16, n_resamples=50, progress=False)
    with torch.no_grad(), gate.attached(model):
        logits = model(data.images)
    masks = gate.last_masks[1]
    assert result.accuracy == pytest.approx(float((logits.argmax(-1) == data.labels).double().mean()))
    assert result.usage == pytest.approx(float(masks.double().mean()))
    assert result.keep_rate.shape == (5, 1, 4) and len(result.per_class) == 5
    assert result.usage_ci[0] <= result.usage <= result.usage_ci[1]
    assert "| **all** | 64 |" in result.to_markdown()


def test_attached_on_a_permanently_gated_model_does_not_gate_twice() -> None:
    from vit_interp.gating.evaluation import evaluate_gate

    model = micro_model(image_mean=None)
    data = synthetic_dataset(n=32)
    gate = HeadGate.preset("final", model.cfg)
    once = evaluate_gate(model, gate, data, progress=False)
    gate.attach(model)
    again = evaluate_gate(model, gate, data, progress=False)  # used to raise "found no input"
    gate.detach(model)
    assert again.accuracy == once.accuracy and again.usage == once.usage


def test_gate_training_works_with_gradients_globally_off() -> None:
    from vit_interp.gating.training import GateTrainConfig, train_gate

    model = micro_model()
    gate = HeadGate.preset("final", model.cfg)
    with torch.no_grad():
        history = train_gate(model, gate, synthetic_dataset(n=64), GateTrainConfig(epochs=1, batch_size=32), progress=False)
        assert not torch.is_grad_enabled(), "the caller's mode is restored"
    assert len(history) == 1


def test_evaluate_gate_from_a_cached_prefix_equals_the_full_run() -> None:
    from vit_interp.gating.evaluation import evaluate_gate
    from vit_interp.gating.training import residual_at

    model = micro_model(image_mean=None)
    data = synthetic_dataset(n=40)
    gate = HeadGate.preset("final", model.cfg)
    full = evaluate_gate(model, gate, data, progress=False)
    cached = evaluate_gate(model, gate, data, progress=False, prefix=residual_at(model, data, 1, progress=False))
    assert cached.accuracy == full.accuracy and torch.equal(cached.keep_rate, full.keep_rate)
    with pytest.raises(ConfigError, match="prefix has 3 rows for 40 images"):
        evaluate_gate(model, gate, data, progress=False, prefix=torch.zeros(3, 17, 32))
