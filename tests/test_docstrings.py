"""Every public docstring example runs (Google-style docstrings carry a runnable example)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import medsam2kit

MODULES = sorted(m.name for m in pkgutil.walk_packages(medsam2kit.__path__, "medsam2kit."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {name}"
