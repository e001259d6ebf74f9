"""Sweeps: results in the database, skipping finished runs, resuming killed ones exactly."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps import report
from sweeps.results import ResultsDB, results_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A small FedAvg sweep: 2 seeds x (fedavg, centralized), 24 rounds, checkpoints every 4,
# run one by one (--novmap_seeds) so that a kill lands between checkpoints.
TINY = ["--config=sweeps/configs/fedavg.py:quick", "--config.num_seeds=2",
        "--config.num_rounds=24", "--config.eval_every=2", "--config.checkpoint_every=4",
        "--config.central_epochs=2", "--config.num_clients=8", "--config.clients_per_round=4",
        "--novmap_seeds"]


def launch(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "sweeps.launch", *TINY, *extra,
                           f"--workdir={workdir}"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def metric_rows(workdir):
  """Every metric row and run keyed by what identifies it (no run ids or timestamps)."""
  with ResultsDB(results_path(workdir)) as db:
    return db.snapshot()


def count_metrics(workdir):
  path = results_path(workdir)
  if not os.path.exists(path):
    return 0
  try:
    con = sqlite3.connect(path, timeout=5)
    n = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    con.close()
    return n
  except sqlite3.OperationalError:  # schema not created yet
    return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("whole")
  proc = launch(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  return workdir, out


@pytest.mark.slow
def test_sweep_records_every_run_and_metric(uninterrupted):
  workdir, out = uninterrupted
  rows, runs = metric_rows(workdir)
  assert [(m, s, st) for m, s, st, _ in runs] == [
      ("centralized", 0, "done"), ("centralized", 1, "done"), ("fedavg", 0, "done"),
      ("fedavg", 1, "done")]
  # FedAvg logs 4 metrics at each of 12 evaluations and its client_lr at the last;
  # centralized 2 metrics and its client_lr once.
  fed = [r for r in rows if r[0] == "fedavg"]
  assert len(fed) == 2 * (12 * 4 + 1) and len(rows) == len(fed) + 2 * 3
  assert sorted({r[2] for r in fed}) == list(range(2, 25, 2))
  assert all(r[4] > 0 for r in fed)  # simulated time is logged beside every round
  assert "claim accuracy_vs_centralized" in out


@pytest.mark.slow
def test_relaunch_skips_finished_runs(uninterrupted):
  workdir, _ = uninterrupted
  before = metric_rows(workdir)
  proc = launch(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert "(4 already done)" in out
  assert metric_rows(workdir) == before
  with ResultsDB(results_path(workdir)) as db:
    assert all(r["attempts"] == 1 for r in db.runs())


@pytest.mark.slow
def test_report_rebuilds_from_database_alone(uninterrupted):
  workdir, _ = uninterrupted
  out = Path(report.latest_report(str(workdir), "fedavg"))
  assert out.name.startswith("quick,") and out.parent == workdir / "fedavg"
  original = (out / "claims.json").read_text()
  for name in ("claims.json", "report.md", "accuracy.png"):
    (out / name).unlink()
  report.rebuild(str(workdir))
  assert (out / "claims.json").read_text() == original
  assert (out / "accuracy.png").stat().st_size > 0
  assert "| fedavg |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_reported_run_not_done_makes_every_claim_incomplete(uninterrupted, tmp_path):
  """DESIGN.md contract 8: a claim missing a seed's value is incomplete, not false."""
  import json
  import shutil

  workdir = tmp_path / "copy"
  shutil.copytree(uninterrupted[0], workdir)
  with sqlite3.connect(results_path(workdir)) as con:
    con.execute("UPDATE runs SET status = 'failed' WHERE method = 'centralized' AND seed = 1")
  (doc,) = report.rebuild(str(workdir))
  (claim,) = doc["claims"]
  assert claim["holds"] is None and claim["incomplete"] == ["centralized seed 1"]
  out = Path(report.latest_report(str(workdir), "fedavg"))
  assert json.loads((out / "claims.json").read_text())["claims"] == [claim]
  assert "**Incomplete**: 1 reported runs are not done (centralized seed 1)" in (
      out / "report.md").read_text()
  assert "| incomplete |" in report.claims_table(doc)


@pytest.mark.slow
def test_sigkill_at_several_points_then_relaunch_gives_identical_results(uninterrupted, tmp_path):
  """Kill the sweep with SIGKILL after 5 metric rows, then after 62 (10 rows into the third
  run, after a checkpoint of it), then let it finish."""
  expected = metric_rows(uninterrupted[0])
  workdir = tmp_path / "killed"
  for kill_after in (5, 62):
    proc = launch(workdir)
    deadline = time.monotonic() + 300
    while count_metrics(workdir) < kill_after and proc.poll() is None:
      assert time.monotonic() < deadline, "the sweep made no progress"
      time.sleep(0.05)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  proc = launch(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert "resumed at round" in out
  assert metric_rows(workdir) == expected


@pytest.mark.slow
def test_ctrl_c_twice_stops_keeps_the_checkpoints_and_the_relaunch_gives_identical_results(
    uninterrupted, tmp_path):
  """A terminal's Ctrl-C, twice, 70 metric rows in (the third run, a host loop with
  checkpoints every 4 rounds): exit 130 with the one line, the second ignored; the finished
  runs stay done, the one in progress is interrupted, its checkpoints kept; the relaunch
  finishes the rest and every row equals the uninterrupted sweep's."""
  workdir = tmp_path / "stopped"
  proc = launch(workdir)
  deadline = time.monotonic() + 300
  while count_metrics(workdir) < 70 and proc.poll() is None:
    assert time.monotonic() < deadline, "the sweep made no progress"
    time.sleep(0.05)
  assert proc.poll() is None, "the sweep finished before it could be interrupted"
  proc.send_signal(signal.SIGINT)
  time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  lines = out.strip().splitlines()
  assert proc.returncode == 130, out[-3000:]
  assert lines[-1] == "interrupted; relaunch the same command to resume", lines[-5:]
  assert "Traceback" not in out  # the second, during the stop or the exit, changed nothing
  _, runs = metric_rows(workdir)
  status = [st for _, _, st, _ in runs]
  assert status.count("interrupted") == 1 and "failed" not in status and "running" not in status
  assert status.count("done") == 2  # fedavg and centralized of seed 0, finished before
  (run_dir,) = (workdir / "fedavg" / "runs").iterdir()
  kept = os.listdir(run_dir / "fedavg-seed1" / "checkpoints")
  assert kept and all(name.isdigit() and int(name) % 4 == 0 for name in kept), kept
  proc = launch(workdir)
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert metric_rows(workdir) == metric_rows(uninterrupted[0])
