"""The documentation site builds, its hook table matches the code, and its Python examples run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vit_interp import HookedViT, ViTConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
HOOK_TABLE_HEADER = ["hook", "shape", "what it is"]
SKIP_MARKER = "<!-- docs-test: skip"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "hooks" / "index.html").is_file()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _strip_code(cell: str) -> str:
    return cell.strip().strip("`").strip()


def parse_hook_table(text: str) -> list[tuple[str, str]]:
    """(name, shape) rows of the markdown table headed ``hook | shape | what it is``."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if line.lstrip().startswith("|") and [c.lower() for c in _cells(line)] == HOOK_TABLE_HEADER:
            break
    else:
        raise AssertionError("docs/hooks.md has no table headed 'hook | shape | what it is'")
    rows = []
    for line in lines[start + 2 :]:  # skip header and |---| separator
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        assert len(cells) == 3, f"hook table row does not have 3 cells: {line!r}"
        rows.append((_strip_code(cells[0]), _strip_code(cells[1])))
    assert rows, "the hook table in docs/hooks.md is empty"
    return rows


def parse_shape(shape: str, sizes: dict[str, int]) -> tuple[int, ...]:
    """``[batch, pos, 1]`` → concrete sizes; unknown dim names fail the test."""
    match = re.fullmatch(r"\[(.*)\]", shape)
    assert match, f"shape {shape!r} is not written as [dim, dim, ...]"
    out = []
    for dim in (d.strip() for d in match.group(1).split(",")):
        if dim.isdigit():
            out.append(int(dim))
        else:
            assert dim in sizes, f"unknown dim name {dim!r} in shape {shape!r}; use one of {sorted(sizes)}"
            out.append(sizes[dim])
    return tuple(out)


def test_hook_table_matches_model() -> None:
    # Distinct sizes (n_ctx = 1 + 3 * 2 = 7), so that every documented dim is identifiable in the
    # cached shapes; ln_pre and hook_result on, so that every optional hook exists.
    cfg = ViTConfig(
        n_layers=2, d_model=24, n_heads=3, d_head=5, d_mlp=40, image_size=(12, 8), patch_size=4,
        in_channels=1, n_classes=11, ln_pre=True, seed=0,
    )
    model = HookedViT(cfg)
    model.set_use_attn_result(True)
    batch = 2
    _, cache = model.run_with_cache(torch.randn(batch, cfg.in_channels, *cfg.image_size))
    sizes = {
        "batch": batch, "pos": cfg.n_ctx, "q_pos": cfg.n_ctx, "k_pos": cfg.n_ctx,
        "d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp,
        "n_classes": cfg.n_classes,
    }
    distinct = {name: size for name, size in sizes.items() if name not in ("q_pos", "k_pos")}
    assert len(set(distinct.values()) | {1}) == len(distinct) + 1, f"test sizes must be distinct: {distinct}"

    documented: dict[str, tuple[int, ...]] = {}
    for name, shape in parse_hook_table((DOCS / "hooks.md").read_text()):
        expected = parse_shape(shape, sizes)
        names = [name.replace("{l}", str(layer)) for layer in range(cfg.n_layers)] if "{l}" in name else [name]
        for concrete in names:
            assert concrete not in documented, f"{concrete} is documented twice"
            documented[concrete] = expected

    cached = set(cache.keys())
    assert cached == set(model.hook_dict), "every hook should fire on a full forward pass"
    assert not cached - set(documented), f"hooks missing from docs/hooks.md: {sorted(cached - set(documented))}"
    assert not set(documented) - cached, f"stale hooks in docs/hooks.md: {sorted(set(documented) - cached)}"
    for name, expected in documented.items():
        assert tuple(cache[name].shape) == expected, f"{name}: documented {expected}, actual {tuple(cache[name].shape)}"


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a page, except those right after a ``<!-- docs-test: skip ... -->`` line."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            skip = i > 0 and lines[i - 1].strip().startswith(SKIP_MARKER)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if not skip:
                blocks.append("\n".join(lines[i + 1 : end]))
            i = end
        i += 1
    return blocks


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md") if python_blocks(p.read_text())))
def test_python_examples_run(page: str) -> None:
    """Each page's examples run in order in one namespace, like a reader pasting them into a session."""
    blocks = python_blocks((DOCS / page).read_text())
    assert blocks, f"docs/{page} has no python examples"
    namespace: dict = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"docs/{page} python block {number}", "exec"), namespace)  # noqa: S102
        except Exception as err:  # pragma: no cover - message for the failing block
            raise AssertionError(f"docs/{page} python block {number} failed: {err!r}\n{block}") from err
