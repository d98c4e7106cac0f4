"""The notebooks: each ``.ipynb`` is built from its jupytext percent script (the source of truth) and carries the
same code; executed top to bottom (slow; CI also runs them with ``jupyter nbconvert --execute``)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SCRIPTS = sorted(NOTEBOOKS.glob("*.py"))


def _code_cells(script: Path) -> list[str]:
    text = script.read_text(encoding="utf-8").split("# %%", 1)[1]  # after the jupytext header
    cells = re.split(r"^# %%", "# %%" + text, flags=re.M)[1:]
    return [cell.split("\n", 1)[1].strip() for cell in cells if not cell.startswith(" [markdown]")]


def test_there_are_at_least_three_notebooks_each_with_its_ipynb():
    assert len(SCRIPTS) >= 3
    for script in SCRIPTS:
        ipynb = json.loads(script.with_suffix(".ipynb").read_text(encoding="utf-8"))
        code = ["".join(c["source"]).strip() for c in ipynb["cells"] if c["cell_type"] == "code"]
        assert code == _code_cells(script), f"{script.name}: rebuild with jupytext --to ipynb {script.name}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_notebook_runs_top_to_bottom(script, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(script.with_suffix(".ipynb"), as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
