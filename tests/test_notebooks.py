"""The notebooks in notebooks/: committed without outputs, all of them executed by `make test` (nbmake, in the same
pytest run as the tests), and writing only under a temporary folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
# Every notebook, in order. `make test` runs the whole folder, so a new one is executed as soon as it is added here.
LISTED = (
    "01_models_quickstart.ipynb",
    "02_meta_gradients.ipynb",
    "03_tar_toy_world.ipynb",
    "04_mlac.ipynb",
)


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _code(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_every_notebook_is_listed():
    found = tuple(p.name for p in _notebooks())
    assert found == LISTED, f"notebooks/ holds {found}; list every notebook in LISTED (they all run under make test)"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_committed_without_outputs(path):
    """Outputs are stripped in git: no outputs, no execution counts, no execution timings in the cell metadata
    (`jupyter nbconvert --clear-output --inplace` does the first two; nbclient adds the third)."""
    for i, cell in enumerate(_code(path)):
        assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them before committing"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{path.name} cell {i} has execution timings"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.name)
def test_notebooks_write_only_under_a_temporary_folder(path):
    source = "\n".join("".join(c["source"]) for c in _code(path))
    if re.search(r"output_dir|out_dir|save_pretrained|savefig|open\(", source):
        assert "tempfile.mkdtemp(" in source, f"{path.name} writes files: put them under tempfile.mkdtemp()"


def _recipe(makefile: str, target: str) -> list[str]:
    lines = makefile.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_test_executes_the_notebooks_with_the_tests():
    """One pytest invocation (so pytest-xdist spreads notebooks and tests over the same workers) collecting tests/
    as before and every notebook of notebooks/ through nbmake, which the test extra pins."""
    recipe = _recipe((ROOT / "Makefile").read_text(), "test")
    pytest_lines = [line for line in recipe if "-m pytest" in line]
    assert len(pytest_lines) == 1, recipe
    words = pytest_lines[0].split()
    assert {"tests", "notebooks", "--nbmake"} <= set(words), pytest_lines[0]
    pyproject = (ROOT / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*?)^\]", pyproject, re.S | re.M).group(1)
    assert re.search(r'"nbmake==[0-9.]+"', test_extra), "nbmake must be pinned in the test extra"
    assert re.search(r'^testpaths = \["tests"\]', pyproject, re.M)
