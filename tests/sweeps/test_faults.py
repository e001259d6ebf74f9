"""Faults outside the config (issue 16): a workdir that cannot be written, a results file
that is not a results database or is damaged, a damaged checkpoint. The entry points
answer the first three with one line naming the path and what to do, exit code 2, nothing
written; a damaged checkpoint is passed over for the one before it."""

import os
import sqlite3

import pytest

from sweeps import launch, report
from sweeps.results import ResultsDB, results_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# FedAvg quick shrunk to one seed of 4 rounds, 8 clients (tests/sweeps/test_backends.py).
TINY = ["--config=sweeps/configs/fedavg.py:quick", "--config.num_seeds=1",
        "--config.num_rounds=4", "--config.eval_every=2", "--config.checkpoint_every=2",
        "--config.central_epochs=1", "--config.num_clients=8", "--config.clients_per_round=4"]


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def results_file(folder) -> str:
  """A results database of 26 pages (1,500 metric rows)."""
  path = results_path(folder)
  with ResultsDB(path) as db:
    run_id, _ = db.start_run("fedavg", "quick", "fedavg", {"lr": 0.1}, 0)
    db.log_metrics_many(run_id, [(s, None, {f"m{i}": s * i / 7 for i in range(5)})
                                 for s in range(300)])
  return path


def broken_workdir(tmp_path, how):
  folder = tmp_path / "runs"
  path = results_file(folder)
  if how == "not a database":
    with open(path, "w") as f:
      f.write("run,loss\n0,1.5\n")
  else:  # a damaged b-tree page: SQLite opens it, only its integrity check notices
    with open(path, "r+b") as f:
      f.seek(2 * 4096 + 8)
      f.write(bytes(range(192)))
  return folder, path


def snapshot(folder) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("error: --workdir: expected "), err
  return err


@pytest.mark.parametrize("how,why", [("not a database", "file is not a database"),
                                     ("damaged", "SQLite found damage: On tree page 3")])
def test_launch_refuses_a_broken_results_file_with_one_line(tmp_path, capsys, how, why):
  folder, path = broken_workdir(tmp_path, how)
  before = snapshot(folder)
  assert launch.main(["launch", *TINY, f"--workdir={folder}"]) == 2
  err = one_error_line(capsys)
  assert f"got {path!r}" in err and why in err and "choose another --workdir" in err, err
  assert snapshot(folder) == before  # no runs, reports or checkpoints; the file as it was


def test_launch_names_a_workdir_it_cannot_create(tmp_path, capsys):
  """A workdir under a regular file (root, which the sandbox may be, ignores chmod)."""
  (tmp_path / "notes.txt").write_text("a file")
  workdir = tmp_path / "notes.txt" / "runs"
  assert launch.main(["launch", *TINY, f"--workdir={workdir}"]) == 2
  err = one_error_line(capsys)
  assert "a folder this process can create and write in" in err, err
  assert f"got {results_path(workdir)!r}" in err, err


@pytest.mark.parametrize("how,why", [("not a database", "file is not a database"),
                                     ("damaged", "SQLite found damage")])
def test_report_refuses_a_broken_results_file_with_one_line(tmp_path, capsys, how, why):
  folder, path = broken_workdir(tmp_path, how)
  before = snapshot(folder)
  assert report.main([f"--workdir={folder}"]) == 2
  err = one_error_line(capsys)
  assert f"got {path!r}" in err and why in err, err
  assert snapshot(folder) == before


@pytest.mark.slow
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # orbax's leftovers
def test_relaunch_after_a_damaged_latest_checkpoint_resumes_from_the_one_before(tmp_path, capsys):
  """The finding: a truncated latest checkpoint gave an orbax traceback on every relaunch,
  though the previous one was intact. Now the run resumes from round 2 (one line) and ends
  with the rows of the run that never broke."""
  args = ["launch", *TINY, "--novmap_seeds", f"--workdir={tmp_path}"]
  assert launch.main(args) == 0
  with ResultsDB(results_path(tmp_path)) as db:
    expected = db.snapshot()
  (ckpt,) = tmp_path.glob("fedavg/runs/*/fedavg-seed0/checkpoints")
  values = max((p for p in (ckpt / "4").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  values.write_bytes(values.read_bytes()[:values.stat().st_size // 2])  # truncated
  con = sqlite3.connect(results_path(tmp_path))  # as if killed before it was recorded done
  con.execute("UPDATE runs SET status = 'running' WHERE method = 'fedavg'")
  con.commit()
  con.close()
  capsys.readouterr()
  assert launch.main(args) == 0
  out = capsys.readouterr()
  err = out.out + out.err  # progress lines go to stdout
  resumed = [ln for ln in err.splitlines() if "resumed at round" in ln]
  assert len(resumed) == 1, err
  assert "fedavg seed 0: resumed at round 2: the checkpoint of round 4 is unreadable (" in (
      resumed[0]) and resumed[0].endswith(f"moved to {ckpt / '4.unreadable'}"), resumed
  assert "Traceback" not in err, err
  with ResultsDB(results_path(tmp_path)) as db:
    got = db.snapshot()
  assert got == expected
