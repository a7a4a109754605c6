"""Benchmarks stay runnable (smoke runs only: never a timing assertion in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_forward_overhead_quick_run_prints_its_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "forward_overhead.py"), "--quick", "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    assert "HookedViT / timm" in out and "run_with_cache / forward" in out
    assert "max |logits diff| timm vs HookedViT" in out and "(ok)" in out


def test_head_pruning_quick_run_prints_its_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "head_pruning.py"), "--quick", "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    assert "skipping vs masked dense" in out and "(ok)" in out
    assert out.count("at usage 1/3 / dense") == 2


def test_steering_sweep_quick_run_prints_its_ratio() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "steering_sweep.py"), "--quick", "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    assert "engine vs naive" in out and "(ok)" in out and "naive / engine (build included)" in out
