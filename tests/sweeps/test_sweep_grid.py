"""Sweeps in process: vmapped seeds, failures that do not stop the other runs, grids."""

import io
import json
import os
import shutil
import sqlite3
import types

import jax
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from jaxfl.loop import DivergenceError
from sweeps import launch, report
from sweeps.configs.fedavg import SERVER_LRS, get_config, get_sweep
from sweeps.experiments import fedavg
from sweeps.grid import point_config, point_name
from sweeps.provenance import report_folder
from sweeps.results import ResultsDB, config_hash, results_path
from sweeps.sweep import RunSpec, run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(**overrides):
  """2 seeds x (fedavg, centralized); 7 rounds evaluated at 3, 6 and 7 (a shorter last stretch);
  a one-point grid at ``client_lr``, so the vmapped families and the host loop run alike."""
  c = get_config("quick")
  c.update({**dict(num_seeds=2, num_rounds=7, eval_every=3, central_epochs=1, num_clients=8,
                  clients_per_round=4, client_lr_grid=(0.05,)), **overrides})
  return c


def rows(workdir):
  con = sqlite3.connect(results_path(workdir))
  out = con.execute("SELECT r.method, r.seed, m.step, m.name, m.sim_time, m.value FROM metrics m "
                    "JOIN runs r ON r.id = m.run_id ORDER BY 1, 2, 3, 4").fetchall()
  con.close()
  return out


@pytest.fixture(scope="module")
def one_by_one(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one_by_one")
  run_sweep(fedavg, tiny(), str(workdir), stream=io.StringIO(), vmap_seeds=False)
  return rows(workdir)


@pytest.fixture(scope="module")
def vmapped(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vmapped")
  stream = io.StringIO()
  run_sweep(fedavg, tiny(), str(workdir), stream=stream)
  return rows(workdir), stream.getvalue(), workdir


@pytest.mark.slow
def test_vmapped_seeds_compute_the_one_by_one_rows(vmapped, one_by_one):
  got_rows, log, _ = vmapped
  assert "[fedavg seeds 0,1 (one vmapped call)] done" in log
  assert "runs 4/4" in log
  assert [r[:4] for r in got_rows] == [r[:4] for r in one_by_one]
  assert sorted({r[2] for r in got_rows if r[0] == "fedavg"}) == [3, 6, 7]
  n_test = len(fedavg.prepare(tiny()).ds.y_test)
  for got, want in zip(got_rows, one_by_one):
    name = got[3]
    # Batching the seeds' matmuls changes float32 rounding only: losses agree to ~1e-6, and
    # an accuracy may differ by at most one test sample whose logits were a near tie.
    tol = {"accuracy": 1.0 / n_test + 1e-9, "participants": 0.0}.get(name, 1e-4)
    assert abs(got[5] - want[5]) <= tol, (got, want)
    assert (got[4] is None) == (want[4] is None)
    if got[4] is not None:
      assert got[4] == pytest.approx(want[4], rel=1e-5)


@pytest.mark.slow
def test_vmapped_seeds_are_bit_reproducible(tmp_path, vmapped):
  run_sweep(fedavg, tiny(), str(tmp_path), stream=io.StringIO())
  assert rows(tmp_path) == vmapped[0]


@pytest.mark.slow
def test_two_configs_in_one_workdir_keep_both_reports_and_both_rebuild(vmapped, tmp_path):
  """Issue 16: a second config launched into a workdir no longer overwrites the first's
  report; each folder is named from its overrides and hash, and both rebuild."""
  workdir = tmp_path / "w"
  shutil.copytree(vmapped[2], workdir)
  first, second = tiny(), tiny(client_lr_grid=(0.07,))  # the same program, another rate
  run_sweep(fedavg, second, str(workdir), stream=io.StringIO())
  outs = [workdir / report_folder(c) for c in (first, second)]
  names = sorted(p.name for p in (workdir / "fedavg").iterdir() if p.name != "runs")
  assert names == sorted(o.name for o in outs)
  assert outs[1].name == ("quick,central_epochs=1,client_lr_grid=0.07,clients_per_round=4,"
                          f"eval_every=3,num_clients=8,num_rounds=7,num_seeds=2-"
                          f"{config_hash(second)[:8]}")
  files = {}
  for out, c in zip(outs, (first, second)):
    doc = json.loads((out / "claims.json").read_text())
    assert doc["config_hash"] == config_hash(c)
    facts = doc["provenance"]
    assert facts["overrides"]["client_lr_grid"] == list(c.client_lr_grid)
    (launch_,) = facts["launches"]  # one launch computed each config's runs
    assert launch_["versions"]["jax"] == jax.__version__ and launch_["backend"] == "local"
    assert facts["run_devices"] == [{"platform": "cpu", "device": jax.devices()[0].device_kind,
                                     "devices": 8}]
    text = (out / "report.md").read_text()
    assert "## Provenance" in text and f"Config hash `{config_hash(c)}`" in text
    files[out] = ((out / "claims.json").read_text(), text)
  assert report.latest_report(str(workdir), "fedavg") == str(outs[1])  # the newest launch
  for out in outs:
    shutil.rmtree(out)
  assert sorted(d["config_hash"] for d in report.rebuild(str(workdir))) == \
      sorted(config_hash(c) for c in (first, second))
  assert {o: ((o / "claims.json").read_text(), (o / "report.md").read_text())
          for o in outs} == files  # identical, provenance included


def _fake_runner(fail_seeds):
  """A two-seed experiment whose runs log one row; seeds in ``fail_seeds`` raise."""
  def execute(c, spec, ctx, run_dir, log_metrics, progress):
    if spec.seed in fail_seeds:
      raise DivergenceError(f"seed {spec.seed} diverged")
    log_metrics(1, 0.5, {"accuracy": 0.25 * (spec.seed + 1)})
    return {"device": "test"}

  def report_(c, db, out, digest):
    return {"experiment": "fake", "variant": c.variant, "claims": []}

  return types.SimpleNamespace(
      validate=lambda c: None, prepare=lambda c: None, rounds=lambda c, s: 1,
      run_specs=lambda c: [RunSpec("m", s) for s in (0, 1, 2)], execute=execute,
      report=report_)


def test_a_failed_run_is_recorded_and_the_others_still_finish(tmp_path):
  import ml_collections

  c = ml_collections.ConfigDict({"experiment": "fake", "variant": "quick", "seed": 0})
  with pytest.raises(DivergenceError, match="seed 0 diverged"):
    run_sweep(_fake_runner({0, 2}), c, str(tmp_path), stream=io.StringIO())
  with ResultsDB(results_path(tmp_path)) as db:
    runs = {r["seed"]: r for r in db.runs()}
    assert [runs[s]["status"] for s in (0, 1, 2)] == ["failed", "done", "failed"]
    assert runs[0]["error"] == "DivergenceError: seed 0 diverged"
    assert runs[1]["info"]["device"] == "test"  # the run's own, beside where it ran:
    assert runs[1]["info"]["environment"]["devices"] == 8  # the suite's 8 host devices
    assert [m["value"] for m in db.metrics()] == [0.5]
  # Relaunched with the cause gone: only the failed runs run again.
  run_sweep(_fake_runner(set()), c, str(tmp_path), stream=io.StringIO())
  with ResultsDB(results_path(tmp_path)) as db:
    assert [r["attempts"] for r in db.runs()] == [2, 1, 2]
    assert [m["value"] for m in db.metrics()] == [0.25, 0.5, 0.75]


def test_every_fedavg_grid_point_is_a_valid_config():
  grid = get_sweep()
  assert len(grid) == len(SERVER_LRS) * 3
  assert {p["server_optimizer"] for p in grid} == set(SERVER_LRS)
  for point in grid:
    c = point_config(get_config("quick"), point)
    fedavg.validate(c)
    assert all(c[k] == v for k, v in point.items())
  assert point_name({"alpha": 0.1, "server_optimizer": "fedadam"}) == \
      "alpha=0.1,server_optimizer=fedadam"
  assert point_name({"path": "a/b c", "ks": (8, 64)}) == "ks=8-64,path=a_b_c"


def test_point_config_names_unknown_or_mistyped_keys():
  with pytest.raises(ConfigError, match="nope") as e:
    point_config(get_config("quick"), {"nope": 1})
  assert e.value.field == "get_sweep()['nope']"
  with pytest.raises(ConfigError) as e:
    point_config(get_config("quick"), {"num_clients": "many"})
  assert e.value.field == "get_sweep()['num_clients']"
  for key in ("alpha.x", "nope.x"):  # a dotted key names a block's field
    with pytest.raises(ConfigError) as e:
      point_config(get_config("quick"), {key: 1})
    assert e.value.field == f"get_sweep()[{key!r}]"


def test_point_config_sets_a_blocks_field_and_leaves_the_config_alone():
  c = get_config("quick")
  with c.unlocked():
    c.block = {"x": 1.0, "y": 2.0}
  p = point_config(c, {"block.x": 3.0, "alpha": 0.1})
  assert (p.block.x, p.block.y, p.alpha) == (3.0, 2.0, 0.1)
  assert (c.block.x, c.alpha) == (1.0, 0.5)


GRID_CONFIG = """
from sweeps.configs.fedavg import get_config


def get_sweep():
  return {grid!r}
"""
TINY_FLAGS = ["--config.num_seeds=1", "--config.num_rounds=4", "--config.eval_every=2",
              "--config.central_epochs=1", "--config.num_clients=8",
              "--config.clients_per_round=4", "--config.client_lr_grid=(0.05,)"]


def write_config(tmp_path, grid):
  path = tmp_path / "grid_config.py"
  path.write_text(GRID_CONFIG.format(grid=grid))
  return str(path)


@pytest.mark.slow
def test_sweep_flag_runs_every_point_and_the_table_rebuilds(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  config = write_config(tmp_path, [{"alpha": 0.5}, {"alpha": 100.0, "server_lr": 0.5}])
  workdir = tmp_path / "runs"
  assert launch.main(["launch", f"--config={config}:quick", *TINY_FLAGS, "--sweep",
                      f"--workdir={workdir}"]) == 0
  out = workdir / "fedavg"
  points = ["alpha=0.5", "alpha=100.0,server_lr=0.5"]
  for name in points:
    assert (out / "sweep" / name / "claims.json").exists()
    assert (out / "sweep" / name / "accuracy.png").stat().st_size > 0
  table = (out / "sweep.md").read_text()
  assert "# fedavg: sweep of 2 grid points" in table
  assert "[alpha=100.0, server_lr=0.5](sweep/alpha=100.0,server_lr=0.5/report.md)" in table
  with ResultsDB(results_path(workdir)) as db:
    assert len({r["config_hash"] for r in db.runs()}) == 2
    assert sorted(r["out"] for r in db.reports()) == [f"fedavg/sweep/{p}" for p in points]
    alphas = {r["config"]["alpha"] for r in db.runs()}
    assert alphas == {0.5, 100.0}
  # The whole tree of reports comes back from the database alone.
  claims = {p: (out / "sweep" / p / "claims.json").read_text() for p in points}
  for p in points:
    (out / "sweep" / p / "claims.json").unlink()
  (out / "sweep.md").unlink()
  docs = report.rebuild(str(workdir))
  assert len(docs) == 2
  assert (out / "sweep.md").read_text() == table
  assert {p: (out / "sweep" / p / "claims.json").read_text() for p in points} == claims
  # A relaunch finds every point done.
  assert launch.main(["launch", f"--config={config}:quick", *TINY_FLAGS, "--sweep",
                      f"--workdir={workdir}"]) == 0
  assert capsys.readouterr().out.count("(2 already done)") == 2


@pytest.mark.parametrize("grid,field", [
    ([{"alpha": -1.0}], "config.alpha"),
    ([{"alpha": 0.5}, {"nope": 1}], "get_sweep()['nope']"),
    ([], "--sweep"),
])
def test_bad_grid_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, grid, field):
  monkeypatch.chdir(ROOT)
  config = write_config(tmp_path, grid)
  workdir = tmp_path / "runs"
  assert launch.main(["launch", f"--config={config}:quick", *TINY_FLAGS, "--sweep",
                      f"--workdir={workdir}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {field}"), err
  assert not workdir.exists()


def test_sweep_flag_needs_get_sweep(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(ROOT)
  path = tmp_path / "plain.py"
  path.write_text("from sweeps.configs.fedavg import get_config\n")
  assert launch.main(["launch", f"--config={path}:quick", "--sweep",
                      f"--workdir={tmp_path / 'runs'}"]) == 2
  assert capsys.readouterr().err.startswith("error: --sweep: expected a config file defining "
                                            "get_sweep()")
  assert not (tmp_path / "runs").exists()


def test_family_steps_match_the_evaluated_rounds():
  c = tiny()
  ctx = fedavg.prepare(c)
  fed, central = fedavg.families(c, ctx)
  assert fed.steps == tuple(fedavg.eval_rounds(c)) == (3, 6, 7)
  (c0, test0), (c1, test1) = [fed.inputs("fedavg", s, "report") for s in (0, 1)]
  assert c0.x.shape == c1.x.shape  # padded to one n_max: stackable
  assert not np.array_equal(c0.count, c1.count)  # each seed its own partition
  # Tuning runs evaluate on the validation split, reported runs on the test split, padded
  # to one length (one program); both methods get the same grid.
  val = fed.inputs("fedavg", 1000, "tune")[1]
  assert test0.mask.sum() == len(ctx.ds.y_test) and val.mask.sum() == len(ctx.ds.y_val)
  assert val.x.shape == test0.x.shape and central.inputs("centralized", 0, "tune") is val
  assert fed.grid == central.grid == ({"client_lr": 0.05},)
  assert fedavg.families(get_config("quick"), ctx)[1].grid == tuple(
      {"client_lr": v} for v in (0.025, 0.05, 0.1))
  # Sharded over devices, the seeds run one by one (no vmap of shard_map).
  assert fedavg.vmappable(c) and not fedavg.vmappable(tiny(num_devices=2))
