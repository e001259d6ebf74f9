"""colab/quickstart.ipynb runs top to bottom on CPU and writes its sweep's claims."""

import json
import os
import sys

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

  claims_path = tmp_path / "fedavg" / "claims.json"
  assert claims_path.is_file()
  doc = json.loads(claims_path.read_text())
  assert [c["id"] for c in doc["claims"]] == ["accuracy_vs_centralized"]
  assert (tmp_path / "results.sqlite").is_file()
  assert (tmp_path / "fedavg" / "accuracy.png").is_file()
