"""Execute every tutorial notebook (``tutorials/*.ipynb``) and fail on any cell error.

The kernel is the interpreter running the tests (a kernelspec written to a temporary directory
points at ``sys.executable``), started in the ``tutorials`` directory with the Agg matplotlib
backend, so the notebooks run headless against the installed checkout. Nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 600
KERNEL_NAME = "vit-interp-tests"
# Notebooks that take more than ~20 s on 2 CPU cores (file names); they get the `slow` marker.
SLOW_NOTEBOOKS: set[str] = {"02_dynamic_head_pruning.ipynb", "03_sae_latents.ipynb", "04_per_class_steering.ipynb",
                             "05_latent_head_attribution.ipynb"}

# Runs first in the kernel: proves it is this interpreter's environment, not some other Python.
_KERNEL_CHECK = f"""
import sys
assert sys.prefix == {sys.prefix!r}, f"kernel runs {{sys.executable}}, expected {sys.executable!r}"
"""


def _params() -> list:
    return [
        pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if path.name in SLOW_NOTEBOOKS else [])
        for path in NOTEBOOKS
    ]


def _kernel_manager(tmp_path: Path) -> AsyncKernelManager:
    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "vit-interp tests",
        "language": "python",
        "env": {"MPLBACKEND": "Agg"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    assert km.kernel_spec.argv[0] == sys.executable
    return km


@pytest.mark.parametrize("path", _params())
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_KERNEL_CHECK))
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT_S,
        allow_errors=False,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    try:
        # The client does not own a kernel manager it was given: ask it to shut the kernel down.
        client.execute(cleanup_kc=True)
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - start
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    print(f"{path.name} executed in {elapsed:.1f} s")


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"
