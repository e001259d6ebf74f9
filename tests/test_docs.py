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


# The transforms' examples run in a fresh environment holding the library alone, as a user's
# project installs it (tests/test_install.py), not again here.
MODULES = [m for m in modules_with_examples() if not m.startswith("jaxfl.transforms")]
# Examples that compile and train a model (2-7 s each on 2 cores): the full tier only.
SLOW = {"shapes.prism", "shapes.diffusion", "jaxfl.algorithms.fedpeft", "jaxfl.models.quant",
        "jaxfl.models.transformer", "jaxfl.peft.expand", "jaxfl.peft.memory"}


def test_the_collection_finds_the_examples():
  assert {"jaxfl.loop", "jaxfl.algorithms.base", "jaxfl.models.lora", "shapes.ssm"} <= set(MODULES)
  assert SLOW.issubset(MODULES)  # a renamed module must leave the slow list too


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in MODULES])
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has '>>> ' in its source but no docstring example"
  assert result.failed == 0
