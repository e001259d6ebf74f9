"""Method families: stages, chunks, selection on tuning seeds, resumption, divergence.

A toy family whose runs have a known answer: ``loss_t = (lr - best)^2 + seed / 100 + t``
for ``t = 0, 1, 2``, so the chosen learning rate, every row and the padding's effect are
checkable by hand.
"""

import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxfl.loop import DivergenceError
from sweeps import families
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import run_sweep

BEST = {"a": 0.3, "b": 0.7}  # each method's best learning rate (its input)


def config(**overrides):
  c = ml_collections.ConfigDict(dict(experiment="toy", variant="quick", seed=5, num_seeds=2,
                                     num_tuning_seeds=2, lrs=(0.1, 0.3, 0.7), nan_lr=-1.0))
  c.update(overrides)
  return c


def family(c, **overrides):
  def simulate(key, inputs, hparams):
    del key
    best, seed = inputs
    base = (hparams["lr"] - best) ** 2 + seed / 100.0
    loss = base + jnp.arange(3.0)
    loss = jnp.where(hparams["lr"] == c.nan_lr, jnp.nan, loss)
    return 10.0 * jnp.arange(3.0), {"loss": loss}

  kw = dict(name="toy", methods=("a", "b"), simulate=simulate, steps=(0, 1, 2),
            inputs=lambda m, seed, stage: (np.float32(BEST[m]), np.float32(seed)),
            grid=[{"lr": lr} for lr in c.lrs], select=families.lowest("loss"))
  return families.Family(**{**kw, **overrides})


class Toy:
  """An experiment of one family (the sweep's protocol, nothing else)."""

  @staticmethod
  def validate(c):
    del c

  @staticmethod
  def prepare(c):
    del c

  @staticmethod
  def families(c, ctx):
    del ctx
    return [family(c)]

  @staticmethod
  def report(c, db, out, digest):
    del c, db, out, digest
    return {"claims": []}


@pytest.fixture
def calls(monkeypatch):
  """The number of runs in each call of a family's program."""
  sizes = []
  original = families.Program.__call__

  def counted(self, runs, batch):
    sizes.append(len(runs))
    return original(self, runs, batch)

  monkeypatch.setattr(families.Program, "__call__", counted)
  return sizes


def test_names_seeds_and_the_runs_of_each_stage():
  c = config()
  fam = family(c)
  assert families.seeds(c) == [5, 6] and families.tuning_seeds(c) == [1005, 1006]
  tune = families.tuning_runs(fam, c)
  assert [(r.name, r.seed) for r in tune[:3]] == [("a[lr=0.1]", 1005), ("a[lr=0.1]", 1006),
                                                   ("a[lr=0.3]", 1005)]
  assert len(tune) == 2 * 3 * 2 and all(r.stage == "tune" for r in tune)
  rep = families.reported_runs(fam, c, {"a": {"lr": 0.3}, "b": {"lr": 0.7}})
  assert [(r.name, r.seed, r.point["lr"]) for r in rep] == [
      ("a", 5, 0.3), ("a", 6, 0.3), ("b", 5, 0.7), ("b", 6, 0.7)]
  assert families.batch_size(fam, c) == 12  # the larger stage: both calls compile once
  assert [len(x) for x in families.chunks(rep, 3)] == [3, 1]
  # A one-point grid has nothing to tune: no tuning runs, and its point is every run's.
  one = family(c, grid=[{"lr": 0.5}], select=None)
  assert families.tuning_runs(one, c) == [] and families.batch_size(one, c) == 4
  assert {r.point["lr"] for r in families.reported_runs(one, c)} == {0.5}


@pytest.mark.parametrize("kw,match", [
    (dict(methods=()), "non-empty"), (dict(grid=[{"lr": 1.0}, {"eta": 1.0}]), "same keys"),
    (dict(select=None), "needs select"), (dict(batch=0), "batch"),
])
def test_family_rejects_bad_declarations(kw, match):
  with pytest.raises(ValueError, match=match):
    family(config(), **kw)


def test_lowest_ranks_missing_and_diverged_last_and_breaks_ties():
  select = families.lowest("t2t", "-acc", aggregate="median")
  assert select([{"t2t": 3.0, "acc": 0.5}]) < select([{"acc": 0.9}])  # never reached: last
  assert select([{"t2t": 3.0, "acc": 0.9}]) < select([{"t2t": 3.0, "acc": 0.5}])
  assert select([{"t2t": 9.0}]) < select([{"t2t": 1.0, "diverged": 1.0}])
  assert families.lowest("x")([{"x": 1.0}, {"x": 3.0}]) == (2.0,)
  with pytest.raises(ValueError, match="aggregate"):
    families.lowest("x", aggregate="max")


def test_sweep_tunes_then_reports_the_known_answers(tmp_path, calls):
  c = config()
  run_sweep(Toy, c, str(tmp_path), stream=io.StringIO())
  assert calls == [12, 4]  # one call per stage (the 4 reported runs padded to 12)
  with ResultsDB(results_path(tmp_path)) as db:
    lr = db.final_values("toy", "lr")
    series = {m: db.series("toy", m, "loss") for m in ("a", "b")}
    runs = db.runs("toy")
  assert lr["a"] == {5: pytest.approx(0.3), 6: pytest.approx(0.3)}
  assert lr["b"] == {5: pytest.approx(0.7), 6: pytest.approx(0.7)}
  steps, times, loss = series["a"][6]
  assert steps == [0, 1, 2] and times == [0.0, 10.0, 20.0]
  assert loss == pytest.approx([0.06, 1.06, 2.06], abs=1e-6)  # (0.3 - 0.3)^2 + 6/100 + t
  assert len(runs) == 16 and all(r["status"] == "done" for r in runs)


def test_a_call_reports_its_rows_from_inside_the_program(tmp_path, monkeypatch, ticks):
  """A simulate that ticks (jaxfl.progress) shows its rows as the call computes them: a
  line per tick (here none is throttled), in order, before the call's summary line."""
  from jaxfl import progress
  from sweeps import sweep_local

  monkeypatch.setattr(sweep_local, "ROW_LINES_EVERY_S", 0.0)
  c = config(lrs=(0.3,), num_seeds=1)

  def simulate(key, inputs, hparams):
    del key
    def row(_, t):  # three rows, a tick after each (a scan orders them)
      loss = (hparams["lr"] - inputs[0]) ** 2 + t
      progress.tick(t.astype(jnp.int32) + 1, 3, after=loss)
      return None, loss

    return 10.0 * jnp.arange(3.0), {"loss": jax.lax.scan(row, None, jnp.arange(3.0))[1]}

  monkeypatch.setattr(Toy, "families", staticmethod(lambda c, ctx: [family(c, simulate=simulate)]))
  out = io.StringIO()
  run_sweep(Toy, c, str(tmp_path), stream=out)
  lines = [ln for ln in out.getvalue().splitlines() if "[toy seeds 5" in ln]
  assert [ln.split("] ")[1].split(" |")[0] for ln in lines] == [
      "row 1/3", "row 2/3", "row 3/3", "done at row 3/3"]
  assert "rows/s, eta" in lines[1]


def test_relaunch_recomputes_only_the_chunks_not_recorded(tmp_path, calls):
  c = config()
  run_sweep(Toy, c, str(tmp_path), stream=io.StringIO())
  with ResultsDB(results_path(tmp_path)) as db:
    before = db.snapshot()
    # Forget one reported run, as if the launch had been killed before recording it.
    (run,) = [r for r in db.runs("toy", method="b") if r["seed"] == 6]
    db.finish_run(run["id"], "failed", error="killed")
  calls.clear()
  run_sweep(Toy, c, str(tmp_path), stream=io.StringIO())
  assert calls == [4]  # the tuning stage is read back from the database
  with ResultsDB(results_path(tmp_path)) as db:
    assert db.snapshot() == before


def test_a_diverged_tuning_point_is_never_chosen(tmp_path):
  c = config(lrs=(0.3, 0.7), nan_lr=0.3)  # a's best point diverges
  run_sweep(Toy, c, str(tmp_path), stream=io.StringIO())
  with ResultsDB(results_path(tmp_path)) as db:
    diverged = db.final_values("toy", "diverged")
    lr = db.final_values("toy", "lr")
    loss = db.final_values("toy", "loss")
  assert diverged == {"a[lr=0.3]": {1005: 1.0, 1006: 1.0}, "b[lr=0.3]": {1005: 1.0, 1006: 1.0}}
  assert "a[lr=0.3]" not in loss  # its non-finite values are left out
  assert lr["a"] == {5: pytest.approx(0.7), 6: pytest.approx(0.7)}  # the finite point


def test_a_diverged_reported_run_fails_naming_the_metric_and_step(tmp_path):
  c = config(lrs=(0.5,), nan_lr=0.5)  # nothing to tune; every reported run diverges
  with pytest.raises(DivergenceError, match="a seed 5: loss at step 0 is not finite"):
    run_sweep(Toy, c, str(tmp_path), stream=io.StringIO())
  with ResultsDB(results_path(tmp_path)) as db:
    assert {r["status"] for r in db.runs("toy")} == {"failed"}


@pytest.fixture
def remote(monkeypatch):
  """Toy run on the slurm backend's debug executor (submitit, in this process): each
  family call is a task that prepares the experiment from the config, as a worker does."""
  pytest.importorskip("submitit")
  from sweeps import experiments

  real = experiments.get
  monkeypatch.setattr(experiments, "get", lambda name: Toy if name == "toy" else real(name))
  return dict(backend="slurm", backend_options={"cluster": "debug"})


def test_a_remote_backend_gets_one_task_per_family_call_and_the_local_rows(
    tmp_path, calls, remote):
  c = config()
  run_sweep(Toy, c, str(tmp_path / "local"), stream=io.StringIO())
  calls.clear()
  out = io.StringIO()
  run_sweep(Toy, c, str(tmp_path / "remote"), stream=out, **remote)
  assert calls == [12, 4]  # the tuning call, then the reported one: neither twice
  assert "toy: chosen on tuning seeds [1005, 1006]: a [lr=0.3]; b [lr=0.7]" in out.getvalue()
  snapshots = []
  for where in ("local", "remote"):
    with ResultsDB(results_path(tmp_path / where)) as db:
      snapshots.append(db.snapshot())
  assert snapshots[0] == snapshots[1]
  # A reported run forgotten (a lost task): the relaunch sends only its call.
  with ResultsDB(results_path(tmp_path / "remote")) as db:
    (run,) = [r for r in db.runs("toy", method="a") if r["seed"] == 5]
    db.finish_run(run["id"], "failed", error="lost")
  calls.clear()
  run_sweep(Toy, c, str(tmp_path / "remote"), stream=io.StringIO(), **remote)
  assert calls == [4]
  with ResultsDB(results_path(tmp_path / "remote")) as db:
    assert db.snapshot() == snapshots[0]


def test_a_remote_diverged_reported_run_fails_like_the_local_one(tmp_path, remote):
  c = config(lrs=(0.5,), nan_lr=0.5)
  with pytest.raises(DivergenceError, match="seed 5: loss at step 0 is not finite"):
    run_sweep(Toy, c, str(tmp_path), stream=io.StringIO(), **remote)
  with ResultsDB(results_path(tmp_path)) as db:
    assert {r["status"] for r in db.runs("toy")} == {"failed"}
