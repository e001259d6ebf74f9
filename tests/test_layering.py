"""The shape of the house: the library never imports sweeps/, and jaxfl's subpackages import
downward only (DESIGN.md, Layering), so there is no cycle between them. Read from the source
with ``ast`` (imports inside functions count too)."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Higher layers may import lower ones (and their own); never the other way.
LAYERS = {
    "jaxfl": 0, "jaxfl.errors": 0, "jaxfl.progress": 0,
    "jaxfl.sim": 1, "jaxfl.data": 1, "jaxfl.runtime": 1, "jaxfl.local": 1, "jaxfl.loop": 1,
    "jaxfl.checkpoint": 1, "jaxfl.evaluation": 1, "jaxfl.sampling": 1,
    "jaxfl.models": 2,
    "jaxfl.planners": 3, "jaxfl.peft": 3,
    "jaxfl.transforms": 4,
    "jaxfl.algorithms": 5, "jaxfl.inference": 5,
}


def unit(module: str) -> str:
  """The layering unit of a module: ``jaxfl.<sub>`` (or ``jaxfl`` for the root)."""
  parts = module.split(".")
  return ".".join(parts[:2]) if parts[0] == "jaxfl" and len(parts) > 1 else parts[0]


def imports(package: str):
  """``(module, imported module)`` for every import in a package's source."""
  for path in sorted((ROOT / package).rglob("*.py")):
    rel = path.relative_to(ROOT).with_suffix("")
    module = ".".join(p for p in rel.parts if p != "__init__")
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        yield from ((module, a.name) for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        yield module, node.module
        # ``from jaxfl import models`` imports the subpackage jaxfl.models.
        yield from ((module, f"{node.module}.{a.name}") for a in node.names
                    if (ROOT / node.module.replace(".", "/") / a.name).is_dir())


@pytest.mark.parametrize("package", ["jaxfl", "shapes", "pose"])
def test_the_library_never_imports_sweeps(package):
  if not (ROOT / package).is_dir():
    pytest.skip(f"no {package}/ yet")
  bad = [(m, i) for m, i in imports(package) if i == "sweeps" or i.startswith("sweeps.")]
  assert not bad


def test_jaxfl_imports_go_downward_only():
  edges = {(unit(m), unit(i)) for m, i in imports("jaxfl") if i.split(".")[0] == "jaxfl"}
  units = {u for edge in edges for u in edge}
  assert units <= set(LAYERS), f"units without a layer: {sorted(units - set(LAYERS))}"
  upward = sorted((a, b) for a, b in edges if LAYERS[a] < LAYERS[b])
  assert not upward, f"imports that go up a layer: {upward}"
  # Within a layer, no cycle between units either.
  graph = {u: {b for a, b in edges if a == u and b != u} for u in units}

  def visit(u, stack):
    assert u not in stack, f"import cycle: {' -> '.join([*stack, u])}"
    for v in graph[u]:
      visit(v, [*stack, u])

  for u in units:
    visit(u, [])
