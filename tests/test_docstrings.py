"""Every docstring example in the package runs and shows what it says (doctest), each module in a fresh folder.

Examples that need the Hugging Face Hub, a user's file or a long run are marked ``# doctest: +SKIP`` in place.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tempfile

import pytest

import jaxtar

MODULES = sorted(m.name for m in pkgutil.walk_packages(jaxtar.__path__, "jaxtar."))


def test_every_module_is_collected():
    assert {"jaxtar.meta.spec", "jaxtar.models.hf", "jaxtar.eval.mcq", "jaxtar.defenses.tar"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here,
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # and their tempfile.mkdtemp() folders too
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
