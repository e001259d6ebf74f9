"""Ctrl-C on the launcher: a real SIGINT while a family's vmapped call runs stops it at its
next progress tick; the launcher exits 130 with one line, the runs of the call are
interrupted, and relaunching finishes them (the other experiment families: in their own
test files, beside their data fixtures; a host loop's: tests/sweeps/test_sweep.py)."""

import os

import pytest

from sweeps import launch
from sweeps.configs import air_fedga as air_fedga_config
from sweeps.configs import fedavg as fedavg_config
from sweeps.results import ResultsDB, results_path


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
  monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__)))))


@pytest.mark.slow
def test_fedavg_stops_in_its_first_call_and_the_relaunch_finishes(tmp_path, sigint_launch,
                                                                   capsys):
  c = fedavg_config.get_config("quick")
  c.update(num_seeds=2, num_tuning_seeds=1, num_rounds=40, eval_every=2, central_epochs=1,
           num_clients=8, clients_per_round=4, client_lr_grid=(0.05, 0.1))
  argv, got = sigint_launch(c, tmp_path)
  # FedAvg's tuning call (1 seed x 2 points) was running; no other call had started.
  assert sorted(got.values()) == ["interrupted"] * 2 + ["pending"] * 6, got
  assert launch.main(argv) == 0, capsys.readouterr().err[-3000:]
  with ResultsDB(results_path(tmp_path)) as db:
    runs = db.runs()
  assert len(runs) == 8 and {r["status"] for r in runs} == {"done"}
  assert sorted(r["attempts"] for r in runs) == [1] * 6 + [2] * 2  # the two resumed


@pytest.mark.slow
def test_air_fedga_stops_in_its_first_call(tmp_path, sigint_launch):
  c = air_fedga_config.get_config("quick")
  c.update(num_workers=8, num_seeds=2, num_tuning_seeds=1, beta0_grid=(0.5,),
           learning_rate_grid=(0.05,), t_max=400.0, log_points=4, target_window=1,
           group_candidates=(2,), compute_tiers=(1.0, 4.0), target_accuracy=0.5,
           planner_draws=8)
  sigint_launch(c, tmp_path)
