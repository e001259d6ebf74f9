"""colab/quickstart.ipynb runs top to bottom on CPU and writes its sweep's claims, which hold
at its size; its install cell clones and pip-installs from a git URL or a local clone."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="needs the 'notebook' extra")
nbformat = pytest.importorskip("nbformat", reason="needs the 'notebook' extra")
pytest.importorskip("ipykernel", reason="needs the 'notebook' extra")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "colab", "quickstart.ipynb")


def test_notebook_is_committed_clean():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_kernel_runs_this_python():
  """The notebook's kernel must be this interpreter (the venv), not another python on PATH."""
  from jupyter_client.manager import KernelManager

  km = KernelManager(kernel_name="python3")
  assert km.format_kernel_cmd()[0] == sys.executable


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch, user_xla):
  monkeypatch.delenv("JAXFL_SOURCE", raising=False)  # the clone the notebook sits in
  monkeypatch.setenv("JAXFL_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name="python3", timeout=600,
      resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError naming the cell on any error

  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "accuracy_vs_centralized" in text
  assert "round 3:" in text  # the building-blocks cell ran its rounds
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the accuracy plot

  (out,) = (tmp_path / "fedavg").glob("quick,*")  # the notebook's config: its own folder
  claims_path = out / "claims.json"
  assert claims_path.is_file()
  doc = json.loads(claims_path.read_text())
  assert [c["id"] for c in doc["claims"]] == ["accuracy_vs_centralized"]
  # The notebook's shrunk size (2 seeds, 120 rounds) is one at which the claim it shows holds.
  assert doc["claims"][0]["holds"] is True, doc["claims"][0]
  assert "accuracy_vs_centralized holds at this size" in text
  assert (tmp_path / "results.sqlite").is_file()
  assert (out / "accuracy.png").is_file()


# ---------------------------------------------------------------------------- install cell


def install_cell():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [cell] = [c for c in nb.cells if c.cell_type == "code" and "def jaxfl_root" in c.source]
  return cell.source


@pytest.fixture(scope="module")
def cell():
  """The install cell's imports and functions, without its last statements (no clone, no pip)."""
  tree = ast.parse(install_cell())
  tree.body = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
  namespace = {}
  exec(compile(tree, NOTEBOOK, "exec"), namespace)
  return namespace


def make_checkout(path):
  (path / "sweeps" / "configs").mkdir(parents=True)
  (path / "pyproject.toml").write_text("[project]\nname = 'jaxfl'\n")


class FakeRun:
  """``subprocess.run`` for the cell: records commands; ``git clone`` makes a checkout."""

  def __init__(self):
    self.commands = []

  def __call__(self, cmd, check):
    assert check
    self.commands.append(cmd)
    if cmd[:2] == ["git", "clone"]:
      make_checkout(Path(cmd[-1]))


def pip_install(root):
  return [sys.executable, "-m", "pip", "install", "-q", "-e", f"{root}[experiments]"]


def test_install_cell_on_colab_without_a_source_says_what_to_set(cell, tmp_path):
  run = FakeRun()
  with pytest.raises(RuntimeError, match="set JAXFL_SOURCE .* git URL or a clone's path"):
    cell["jaxfl_root"]("", in_colab=True, clone_dir=tmp_path / "jaxfl", cwd=ROOT, run=run)
  assert run.commands == []


def test_install_cell_installs_a_local_clone(cell, tmp_path):
  clone = tmp_path / "my drive" / "jaxfl"
  make_checkout(clone)
  run = FakeRun()
  root = cell["jaxfl_root"](f" {clone} ", in_colab=True, clone_dir=tmp_path / "c", cwd=tmp_path,
                            run=run)
  assert root == clone.resolve() and run.commands == [pip_install(clone.resolve())]
  # This repository, which this interpreter imports already: nothing to install.
  run = FakeRun()
  assert cell["jaxfl_root"](ROOT, in_colab=True, clone_dir=tmp_path / "c", cwd=tmp_path,
                            run=run) == Path(ROOT).resolve()
  assert run.commands == []


@pytest.mark.parametrize("url", ["https://example.org/team/jaxfl.git",
                                 "git@example.org:team/jaxfl.git"])
def test_install_cell_clones_a_git_url_once(cell, tmp_path, url):
  clone_dir = tmp_path / "jaxfl"
  run = FakeRun()
  root = cell["jaxfl_root"](url, in_colab=True, clone_dir=clone_dir, cwd=tmp_path, run=run)
  assert root == clone_dir.resolve()
  assert run.commands == [["git", "clone", "--depth", "1", url, str(root)], pip_install(root)]
  run = FakeRun()  # the notebook run again (a restarted runtime): the clone is there
  assert cell["jaxfl_root"](url, in_colab=True, clone_dir=clone_dir, cwd=tmp_path, run=run) == root
  assert run.commands == [pip_install(root)]


def test_install_cell_rejects_what_it_cannot_install_from(cell, tmp_path):
  run = FakeRun()
  with pytest.raises(RuntimeError, match="neither an existing folder nor a git URL"):
    cell["jaxfl_root"]("no/such/folder", in_colab=True, clone_dir=tmp_path / "c", cwd=tmp_path,
                       run=run)
  with pytest.raises(RuntimeError, match="is not a jaxfl clone"):
    cell["jaxfl_root"](str(tmp_path), in_colab=True, clone_dir=tmp_path / "c", cwd=tmp_path,
                       run=run)
  assert run.commands == []


def test_install_cell_off_colab_uses_the_clone_it_sits_in(cell, tmp_path):
  run = FakeRun()
  assert cell["jaxfl_root"]("", in_colab=False, clone_dir=tmp_path / "c",
                            cwd=os.path.join(ROOT, "colab"), run=run) == Path(ROOT).resolve()
  with pytest.raises(RuntimeError, match="inside a jaxfl clone .* or set JAXFL_SOURCE"):
    cell["jaxfl_root"]("", in_colab=False, clone_dir=tmp_path / "c", cwd=tmp_path, run=run)
  assert run.commands == []


def test_install_cell_runs_on_a_fake_colab(tmp_path):
  """The whole cell, as Colab runs it (``google.colab`` imported), in a fresh interpreter:
  JAXFL_SOURCE from the environment; unset, one error naming it. This repository as the
  source is a runtime restarted after its install (imported already: no pip, no network)."""
  colab = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
  env = {**os.environ, "JAXFL_SOURCE": ROOT}
  cmd = [sys.executable, "-c", colab + install_cell()]
  done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert done.stdout.splitlines()[-1] == f"repository: {Path(ROOT).resolve()}"
  del env["JAXFL_SOURCE"]
  done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1].startswith("RuntimeError: set JAXFL_SOURCE")
  assert not list(tmp_path.iterdir())  # nothing cloned
