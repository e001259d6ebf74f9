"""Tests for ``python -m jaxfl.data.prepare`` (mock raw files, no network)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from jaxfl.data import catalog, prepare


def _run(capsys, *argv) -> tuple[int, str, str]:
  try:
    code = prepare.main(list(argv))
  except SystemExit as e:  # argparse's own errors
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def test_prepares_each_dataset_and_later_loads_read_it(raw_kit, tmp_path, capsys):
  mocks = {n: raw_kit.mock(n) for n in ("fashion_mnist", "emnist")}
  data_dir = str(tmp_path / "tfds")
  code, out, err = _run(capsys, "fashion_mnist", "emnist", "fashion_mnist",
                        "--data_dir", data_dir)
  assert code == 0
  assert out.splitlines() == [f"fashion_mnist: 30 train, 10 test under {data_dir}",
                              f"emnist: 36 train, 12 test under {data_dir}"]
  assert err.count("downloading file://") == 5  # Four idx files and the zip, each once.
  for name, mock in mocks.items():
    ds = catalog.load_dataset(name, data_dir=data_dir)  # download=False: prepared.
    assert len(ds.y_test) == len(mock.y_test)
    np.testing.assert_array_equal(np.sort(ds.y_train), np.sort(mock.y_train))
  code, out, err = _run(capsys, "emnist", "--data_dir", data_dir)  # Again: nothing to do.
  assert code == 0 and err == ""


@pytest.mark.parametrize("argv,field", [
    (["imagenet", "mnist"], "dataset: expected one of ['cifar10', 'digits', 'emnist', "
     "'fashion_mnist', 'mnist'], got 'imagenet'"),
    ([], "the following arguments are required: NAME"),
    (["mnist", "--data_dir"], "argument --data_dir: expected one argument"),
    (["mnist", "--data-dir", "x"], "unrecognized arguments: --data-dir x"),
    (["mnist", "--data_dir", ""], "data_dir: expected a directory path, got ''"),
])
def test_bad_input_is_one_line_and_exit_2(argv, field, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(catalog.ENV_DATA_DIR, str(tmp_path / "default"))
  code, out, err = _run(capsys, *argv)
  assert code == 2
  assert out == "" and err == f"error: {field}\n"
  assert os.listdir(tmp_path) == []  # Nothing written.


def test_a_data_dir_that_is_a_file_is_refused(tmp_path, capsys):
  (tmp_path / "file").write_text("")
  code, _, err = _run(capsys, "mnist", "--data_dir", str(tmp_path / "file"))
  assert code == 2
  assert err.startswith("error: data_dir: expected a directory") and err.count("\n") == 1


def test_a_bad_checksum_is_one_line_and_exit_1(raw_kit, tmp_path, capsys):
  mock = raw_kit.write("cifar10", tmp_path / "published")
  raw_kit.serve("cifar10", mock.published, sha256="f" * 64)
  code, out, err = _run(capsys, "cifar10", "--data_dir", str(tmp_path / "tfds"))
  assert code == 1 and out == ""
  line = err.splitlines()[-1]  # After the "downloading ..." line.
  archive = tmp_path / "tfds" / "downloads" / "cifar10" / "cifar-10-binary.tar.gz"
  assert line.startswith(f"error: {archive}: ")
  assert "expected " + "f" * 64 in line


@pytest.mark.slow
def test_the_module_runs_as_a_command(tmp_path):
  """``python -m jaxfl.data.prepare``: its exit code and line, from a real process."""
  done = subprocess.run([sys.executable, "-m", "jaxfl.data.prepare", "svhn", "--data_dir",
                         str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.splitlines()[-1].startswith("error: dataset: expected one of [")
  assert os.listdir(tmp_path) == []
