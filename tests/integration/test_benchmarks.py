"""Benchmarks stay runnable (smoke runs only: never a timing assertion in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script, expected", [
    ("forward_overhead.py", ["HookedViT / timm", "run_with_cache / forward", "max |logits diff| timm vs HookedViT", "(ok)"]),
    ("head_pruning.py", ["skipping vs masked dense", "(ok)", "(one mask) at usage 1/3 / dense", "(mixed) at usage 1/3 / dense"]),
    ("steering_sweep.py", ["engine vs naive", "(ok)", "naive / engine (build included)"]),
])
def test_benchmark_quick_run_prints_its_ratios(script, expected) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--threads", "1"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    assert all(text in out for text in expected), out
