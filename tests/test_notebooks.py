"""Every notebook under ``notebooks/`` runs top to bottom (nbclient, a real Jupyter kernel) on the
tiny models; a failing cell fails the test with the cell's error.

The kernel gets the test home and pinned models (``LLMAPPS_BASE_MODEL=tiny-base``,
``LLMAPPS_INSTRUCT_MODEL=tiny-instruct``), whatever the defaults are, and runs in a temporary
folder so nothing is written into the checkout. A cell tagged ``parameters`` (the papermill
convention) is overridden by ``PARAMETERS`` to keep the run short; the rest of each notebook runs
as a reader would run it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbclient (dev extra) is not installed")
nbclient = pytest.importorskip("nbclient", reason="nbclient (dev extra) is not installed")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# per notebook: source of its `parameters` cell in CI
PARAMETERS = {"02_compare_strategies.ipynb": "LIMIT = 3  # CI: three test articles"}


@pytest.fixture(scope="module")
def demo_adapter(tiny_models: Path) -> Path:
    """The tiny demo adapter the notebooks load (trained once per test home, shared with
    tests/test_lora_strategy.py), so the notebooks' own time is what they take to run."""
    from llmapps.settings import get_settings
    from llmapps.strategies.lora import ensure_demo_adapter

    return ensure_demo_adapter(get_settings(), base_model="tiny-base")


def test_every_notebook_is_collected():
    names = [nb.name for nb in NOTEBOOKS]
    assert "03_finetune_your_own.ipynb" in names and len(names) >= 3
    assert set(PARAMETERS) <= set(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, demo_adapter: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LLMAPPS_BASE_MODEL", "tiny-base")
    monkeypatch.setenv("LLMAPPS_INSTRUCT_MODEL", "tiny-instruct")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if path.name in PARAMETERS:
        assert tagged, f"{path.name} has no cell tagged 'parameters'"
        tagged[0].source = PARAMETERS[path.name]
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    started = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # the cell and its traceback
        pytest.fail(f"{path.name}: a cell failed\n{str(err)[-3000:]}")
    print(f"{path.name}: {time.perf_counter() - started:.1f} s")
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert errors == []
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
