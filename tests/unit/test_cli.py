"""The ``vit-interp`` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vit_interp.cli import main


def test_hooks_command_lists_every_hook_with_its_shape(capsys) -> None:
    args = ["hooks", "vit_tiny_patch16_224", "--timm-arg", "depth=1", "--timm-arg", "img_size=32", "--timm-arg", "patch_size=8"]
    assert main(args + ["--attn-result"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shapes = dict(line.split(None, 1) for line in lines)
    assert shapes["blocks.0.attn.hook_pattern"] == "[1, 3, 17, 17]"
    assert shapes["blocks.0.attn.hook_result"] == "[1, 17, 3, 192]"
    assert shapes["hook_logits"] == "[1, 1000]"
    assert len(lines) == 2 + 19 + 4  # embeddings, one block, final norm + pooled + logits


def test_bad_timm_arg_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="must look like key=value"):
        main(["hooks", "vit_tiny_patch16_224", "--timm-arg", "depth"])


def test_help_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "vit_interp.cli", "hooks", "--help"], capture_output=True, text=True, check=True)
    assert "timm model name" in out.stdout


def test_user_errors_are_one_line_without_traceback(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "no-such-model", "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vit-interp: error: no model 'no-such-model'") and err.count("\n") == 1
