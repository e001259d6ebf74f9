"""The runnable examples in the library's docstrings run and hold.

Every module of ``jaxfl``, ``shapes``, ``pose`` and ``sweeps`` whose source has a ``>>>``
example is collected (found by reading the files, no list to keep up to date).
"""

import doctest
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jaxfl", "shapes", "pose", "sweeps")


def modules_with_examples() -> list[str]:
  found = []
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob("*.py")):
      if ">>> " in path.read_text():
        rel = path.relative_to(ROOT).with_suffix("")
        found.append(".".join(p for p in rel.parts if p != "__init__"))
  return found


MODULES = modules_with_examples()


def test_the_collection_finds_the_examples():
  assert {"jaxfl.loop", "jaxfl.algorithms.base", "jaxfl.models.lora", "shapes.ssm"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has '>>> ' in its source but no docstring example"
  assert result.failed == 0
