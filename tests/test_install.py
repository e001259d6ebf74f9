"""jaxfl installs into another project as a library: without the experiment stack.

``[project.dependencies]`` holds compatible ranges of what the library needs (jax, jaxlib,
flax, optax, numpy); tensorflow-datasets, scikit-learn, matplotlib, ml-collections and the
rest are the ``experiments`` extra. The test installs the package into a fresh virtual
environment, no extra, with the repository's own exact versions as constraints (so uv
takes them from its cache), and runs the transforms' docstring examples there: their one
run in the suite (``tests/test_docs.py`` leaves them to this test).
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT_STACK = ("tensorflow_datasets", "sklearn", "matplotlib", "ml_collections",
                    "array_record", "tqdm")
DOCTESTS = """
import doctest, importlib, importlib.util, json, pkgutil, sys
import jaxfl.transforms as transforms
names = ["jaxfl.transforms", *(m.name for m in pkgutil.iter_modules(transforms.__path__,
                                                                    "jaxfl.transforms."))]
results = {}
for name in names:
  r = doctest.testmod(importlib.import_module(name),
                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  results[name] = [r.attempted, r.failed]
print(json.dumps({"results": results, "installed": [
    m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]}))
"""


def pyproject() -> dict:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def test_the_library_asks_for_ranges_and_the_repository_pins_them():
  """Ranges in the metadata, the exact versions as uv constraints, each range holding its
  pin, and the experiment stack only in its extra."""
  meta = pyproject()
  deps = meta["project"]["dependencies"]
  names = [d.split(">")[0].split("=")[0].split("<")[0] for d in deps]
  assert names == ["jax", "jaxlib", "flax", "optax", "numpy"]
  assert not any("==" in d for d in deps)
  pins = dict(c.split("==") for c in meta["tool"]["uv"]["constraint-dependencies"])
  from packaging.requirements import Requirement

  extras = meta["project"]["optional-dependencies"]
  for req in map(Requirement, [*deps, *(d for group in extras.values() for d in group)]):
    assert req.specifier.contains(pins[req.name]), (req, pins[req.name])
  assert {"tensorflow-datasets", "scikit-learn", "matplotlib", "ml-collections",
          "orbax-checkpoint"} <= {Requirement(d).name for d in extras["experiments"]}
  # `uv run` in the repository (the README's commands) installs the experiment stack.
  assert meta["dependency-groups"]["repo"] == ["jaxfl[experiments]"]
  assert meta["tool"]["uv"]["default-groups"] == ["repo"]


@pytest.mark.slow
def test_a_fresh_environment_without_the_extra_runs_the_transforms_doctests(tmp_path):
  uv = os.environ.get("UV") or shutil.which("uv")  # `uv run` sets $UV to itself
  if uv is None:
    pytest.skip("uv is not installed (the README's commands and .ci/run install it)")
  venv = tmp_path / "venv"
  python = venv / "bin" / "python"
  constraints = tmp_path / "constraints.txt"
  constraints.write_text("\n".join(pyproject()["tool"]["uv"]["constraint-dependencies"]))
  env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
  subprocess.run([uv, "venv", "-q", str(venv), "--python", sys.executable], check=True,
                 env=env, timeout=120)
  install = subprocess.run([uv, "pip", "install", "-q", "--python", str(python),
                            "--constraint", str(constraints), ROOT],
                           capture_output=True, text=True, env=env, timeout=300)
  assert install.returncode == 0, install.stderr[-2000:]
  listed = subprocess.run([uv, "pip", "list", "--python", str(python), "--format", "json"],
                          capture_output=True, text=True, check=True, env=env, timeout=60)
  packages = {p["name"]: p["version"] for p in json.loads(listed.stdout)}
  assert packages["jax"] == "0.10.2" and "jaxfl" in packages
  assert len(packages) < 40  # the whole stack, with the extra, is about 70
  run = subprocess.run([str(python), "-c", DOCTESTS, *EXPERIMENT_STACK], capture_output=True,
                       text=True, cwd=tmp_path, timeout=300,  # not ROOT: import the installed copy
                       env={**env, "XLA_FLAGS": os.environ["XLA_FLAGS"]})
  assert run.returncode == 0, run.stderr[-3000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  assert got["installed"] == []  # none of the experiment stack came along
  attempted = {m: a for m, (a, _) in got["results"].items()}
  assert all(f == 0 for _, f in got["results"].values()), got["results"]
  assert attempted["jaxfl.transforms.aircomp"] > 0 and attempted["jaxfl.transforms.masking"] > 0
  assert sum(attempted.values()) >= 100
