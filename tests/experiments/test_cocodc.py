"""The CoCoDC experiment: config checks, the evaluation protocol, claims from the curves.

The quick variant's claims are measured by ``python -m sweeps.reproduce``; here the quick
config's run list shows the protocol (every method the same 2 x 2 grid over its own step
sizes, tuning seeds apart), small hand-computed curves pin the target and held-window
rules, and a shrunken run (a one-block model, 16 steps) checks the plumbing with numbers
that follow from the definitions: the tuned point is the grid's argmin, each claim's
per-seed values are recomputed from the logged curves with the held window, the targets
come from the tuning runs alone (rewriting a reported run moves no target), and a launch
killed and relaunched ends with the rows of one never stopped, bit for bit.
"""

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl.errors import ConfigError
from sweeps import families, report
from sweeps.configs import cocodc as cocodc_config
from sweeps.experiments import cocodc
from sweeps.provenance import report_folder
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rows_in(workdir):
  """Every metric row (no ids or timestamps); 0 rows while the file does not exist."""
  if not os.path.exists(results_path(workdir)):
    return ([], [])
  with ResultsDB(results_path(workdir)) as db:
    return db.snapshot()


TINY = dict(num_seeds=2, model=dict(num_layers=1, d_model=8, num_heads=1, d_ff=16), seq_len=8,
            windows_per_worker=32, eval_windows=4, batch_size=2, num_steps=16, inner_steps=8,
            num_fragments=2, overlaps=(1, 5), eval_every=4, warmup_steps=2,
            inner_lr_grid=(3e-3, 3e-2), outer_lr_grid=(0.9,), target_step=8, target_window=1)


def tiny(data_dir, **overrides):
  c = cocodc_config.get_config("quick")
  c.update({**TINY, "data_dir": data_dir, **overrides})
  return c


def test_configs_validate():
  for variant in ("quick", "full"):
    cocodc.validate(cocodc_config.get_config(variant))
  with pytest.raises(ValueError, match="variant"):
    cocodc_config.get_config("huge")


@pytest.mark.parametrize("field,value", [
    ("overlaps", (2, 24)), ("overlaps", (3, 3)), ("eval_every", 5), ("num_steps", 250),
    ("num_fragments", 7), ("num_workers", 99), ("alpha", 1.5), ("lam0", -0.1),
    ("outer_lr_grid", ()), ("inner_lr_grid", (0.0,)), ("inner_lr_grid", (1e-3, 1e-3)),
    ("fragment_pattern", "random"), ("min_step_reduction", 1.0), ("model.num_heads", 3),
    ("model.d_ff", 0), ("wan.bandwidth", 0.0), ("wan.latency", -1.0), ("outer_momentum", 1.0),
    ("target_step", 100), ("target_step", 240), ("target_step", 0), ("target_window", -1),
])
def test_validate_names_the_field(field, value):
  c = cocodc_config.get_config("quick")
  *path, name = field.split(".")
  (c[path[0]] if path else c)[name] = value
  with pytest.raises(ConfigError) as e:
    cocodc.validate(c)
  assert e.value.field == field


def test_every_method_gets_the_same_grid_over_its_own_step_sizes():
  c = cocodc_config.get_config("quick")
  fams = cocodc.families(c, None)  # the runs need no data
  want = [{"inner_lr": a, "outer_lr": b} for a in (2e-3, 4e-3) for b in (0.4, 0.7)]
  assert [list(f.grid) for f in fams] == [want] * 3  # diloco, streaming, cocodc: 4 points
  specs = families.specs(c, fams)
  tuning = [s for s in specs if s.seed >= c.seed + families.TUNING_OFFSET]
  per_method = {}
  for s in tuning:
    per_method.setdefault(s.method.split("[")[0], set()).add(s.method)
  # DiLoCo and each (method, τ): 4 points on the one tuning seed 1000.
  assert {m: len(p) for m, p in per_method.items()} == {
      "diloco": 4, "streaming_tau2": 4, "streaming_tau12": 4, "cocodc_tau2": 4,
      "cocodc_tau12": 4}
  assert {s.seed for s in tuning} == {1000}
  assert "cocodc_tau12[inner_lr=0.004,outer_lr=0.7]" in {s.method for s in tuning}
  reported = specs[len(tuning):]
  assert {s.method for s in reported} == set(per_method)
  assert sorted({s.seed for s in reported}) == [0, 1, 2, 3]
  # One compiled program per family: tuning and reported calls have the same batch.
  assert [families.batch_size(f, c) for f in fams] == [4, 8, 8]
  # alpha and lam0 are fixed: the earlier grid's (and the papers' code's) choices.
  assert (c.alpha, c.lam0) == (0.5, 0.5)


def test_inner_learning_rate_is_traced_and_scales_the_update():
  """The inner AdamW takes its peak lr traced (a grid is a vmap): at step 1 of a 24-step
  warmup its update is lr / 24 times Adam's direction, here -sign(g) (first moment over
  the root of the second, bias-corrected: g / |g|), plus the scaled weight decay."""
  c = cocodc_config.get_config("quick")
  p, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])

  @jax.jit
  def second_update(lr):
    tx = cocodc.inner_optimizer(c, lr)
    state = tx.init(p)
    _, state = tx.update(g, state, p)
    return tx.update(g, state, p)[0]

  lrs = jnp.array([2e-3, 4e-3])
  got = jax.vmap(second_update)(lrs)
  want = -(lrs[:, None] / 24) * (jnp.sign(g) + 0.1 * p)[None]
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_target_is_the_tuning_median_at_the_target_step():
  curve = lambda *v: ([0, 8, 16], [0.0, 1.0, 2.0], list(v))
  tuning = {1000: curve(3.0, 2.5, 2.0), 1001: curve(3.0, 2.9, 2.2), 1002: curve(3.0, 2.6, 2.1)}
  assert cocodc.target_loss(tuning, 8) == 2.6  # median of 2.5, 2.9, 2.6
  assert cocodc.target_loss({**tuning, 1001: curve(3.0, None, 2.2)}, 8) is None  # diverged
  assert cocodc.target_loss(tuning, 12) is None  # not an evaluation step


def test_held_target_ignores_a_single_dip_and_grid_times_interpolate():
  steps = [0, 8, 16, 24, 32, 40]
  loss = [3.0, 2.0, 2.6, 2.1, 2.0, 1.9]  # dips below 2.2 at step 8, back above, then stays
  assert cocodc.held(steps, loss, 2.2, 0) == 8.0  # first passage
  assert cocodc.held(steps, loss, 2.2, 2) == 24.0  # held for 2 more evaluations
  assert cocodc.held(steps, loss, 2.2, 3) is None  # the window would run past the end
  assert cocodc.held(steps, loss, None, 0) is None  # no target
  grid = cocodc.common_time_grid(8.5, 2.0)
  assert grid.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]
  # DiLoCo-like: evaluated every 4 s; its curve on the 2 s grid, nothing past its end (6 s).
  on = cocodc.on_grid(grid, [0.0, 4.0, 6.0], [3.0, 2.0, 1.0])
  np.testing.assert_allclose(on[:4], [3.0, 2.5, 2.0, 1.0])
  assert np.isnan(on[4])
  assert cocodc.held(grid, on, 2.0, 1) == 4.0 and cocodc.held(grid, on, 2.0, 2) is None


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("cocodc")
  c = tiny(str(root / "tfds"))
  doc = run_sweep(cocodc, c, str(root / "a"), stream=io.StringIO())
  return c, doc, root


@pytest.mark.slow
def test_validation_and_test_windows_are_disjoint_halves(swept):
  c, _, _ = swept
  ctx = cocodc.prepare(c)
  (vx, vy), (tx, ty) = ctx.tune, ctx.test
  assert vx.shape == tx.shape == (2 * c.num_workers, c.seq_len)  # 4 per domain: 2 and 2
  rows = lambda x, y: {(a.tobytes(), b.tobytes()) for a, b in zip(x, y)}
  assert not rows(vx, vy) & rows(tx, ty)


@pytest.mark.slow
def test_tuned_point_is_the_grid_argmin_of_validation_loss(swept):
  c, doc, root = swept
  with ResultsDB(results_path(str(root / "a"))) as db:
    loss = db.final_values("cocodc", "eval_loss")
    inner = db.final_values("cocodc", "inner_lr")
    for family, tau in (("diloco", 0), ("streaming", 1), ("cocodc", 5)):
      method = cocodc.method_name(family, tau)
      options = {p["inner_lr"]: loss[families.point_name(method, p)][1000]
                 for p in cocodc.grid(c, family)}
      best = min(options, key=options.get)
      assert doc["reported"]["chosen_on_tuning_runs"][method]["inner_lr"] == best
      for s in (0, 1):
        assert inner[method][s] == best
    runs = db.runs("cocodc")
    assert len(runs) == 2 + 2 * 2 * 2 + 5 * 2 and all(r["status"] == "done" for r in runs)
    assert all(r["info"]["params"] > 0 for r in runs)
  assert doc["reported"]["tuned"] == doc["reported"]["chosen_on_tuning_runs"]


@pytest.mark.slow
def test_claims_follow_from_the_logged_curves_with_the_held_window(swept):
  c, doc, root = swept
  claims = {cl["id"]: cl for cl in doc["claims"]}
  rep = doc["reported"]
  with ResultsDB(results_path(str(root / "a"))) as db:
    curve = lambda m, s: db.series("cocodc", m, "eval_loss")[s]
    chosen = rep["chosen_on_tuning_runs"]
    for m in ("diloco", "streaming_tau5"):
      tuning = db.series("cocodc", families.point_name(m, chosen[m]), "eval_loss")
      assert list(tuning) == [1000]
      assert rep["targets"][m] == tuning[1000][2][tuning[1000][0].index(8)]  # step 8
    steps_cl = claims["steps_to_target_vs_streaming_long_tau"]
    time_cl = claims["time_to_target_vs_diloco"]
    grid = np.arange(rep["time_grid"]["points"]) * c.eval_every * c.step_time
    assert rep["time_grid"]["spacing"] == pytest.approx(0.4)
    for i, s in enumerate((0, 1)):
      steps_s, _, loss_s = curve("streaming_tau5", s)
      steps_c, times_c, loss_c = curve("cocodc_tau5", s)
      assert steps_s == steps_c == list(range(0, 17, 4))  # the initial model, every eval_every
      target = rep["targets"]["streaming_tau5"]
      for win, got in ((1, steps_cl["steps_cocodc"]), (0, steps_cl["first_passage"]
                                                       ["steps_cocodc"])):
        assert got[i] == cocodc.held(steps_c, loss_c, target, win)
      a, b = steps_cl["steps_cocodc"][i], steps_cl["steps_streaming"][i]
      want = None if a is None or not b else 1 - a / b
      assert steps_cl["per_seed"]["cocodc"][i] == want
      assert claims["final_loss_vs_streaming_long_tau"]["per_seed"]["streaming"][i] == loss_s[-1]
      on = cocodc.on_grid(grid, times_c, loss_c)
      assert time_cl["per_seed"]["cocodc"][i] == cocodc.held(grid, on, rep["targets"]["diloco"], 1)
      # DiLoCo evaluates every H = 8 steps and pays the whole model's all-reduce each time.
      steps_d, times_d, _ = curve("diloco", s)
      assert steps_d == [0, 8, 16]
      full, _ = cocodc.fragment_comm_seconds(c)
      assert times_d[-1] == pytest.approx(16 * c.step_time + 2 * full, rel=1e-5)
      assert grid[-1] <= times_d[-1] < grid[-1] + 0.4  # the grid spans the longest run
  cl = claims["final_loss_vs_streaming_long_tau"]
  assert cl["aggregate"] == "mean"
  assert cl["value"] == pytest.approx(np.mean(cl["per_seed"]["cocodc"]), rel=1e-12)
  assert cl["holds"] == (cl["value"] <= cl["baseline_value"])
  vals = steps_cl["per_seed"]["cocodc"]
  expected = None if None in vals else float(np.mean(vals))
  assert steps_cl["value"] == (pytest.approx(expected) if expected is not None else None)
  assert steps_cl["holds"] == (expected is not None and expected >= c.min_step_reduction)
  assert time_cl["strict"] and [cl["kind"] for cl in doc["claims"]] == ["reproduction"] * 3


@pytest.mark.slow
def test_a_rewritten_reported_run_moves_no_target(swept, tmp_path):
  """The targets are read from the tuning runs: halving every logged loss of DiLoCo's and
  Streaming DiLoCo's reported runs changes their own times and final losses, not the
  targets nor the chosen points."""
  c, doc, root = swept
  shutil.copytree(root / "a", tmp_path / "a")
  path = results_path(str(tmp_path / "a"))
  with sqlite3.connect(path) as con:
    con.execute("UPDATE metrics SET value = value / 2 WHERE name = 'eval_loss' AND run_id IN "
                "(SELECT id FROM runs WHERE method IN ('diloco', 'streaming_tau5') "
                "AND seed < 1000)")
  out = tmp_path / "out"
  out.mkdir()
  with ResultsDB(path) as db:
    digest = db.runs("cocodc")[0]["config_hash"]
    again = cocodc.report(c, db, str(out), digest)
  rep, before = again["reported"], doc["reported"]
  assert rep["targets"] == before["targets"]
  assert rep["chosen_on_tuning_runs"] == before["chosen_on_tuning_runs"]
  finals = lambda d, m: d["reported"]["final_eval_loss"][m]
  assert finals(again, "diloco") == [v / 2 for v in finals(doc, "diloco")]
  assert finals(again, "cocodc_tau5") == finals(doc, "cocodc_tau5")


@pytest.mark.slow
def test_report_rebuilds_from_the_database(swept):
  c, doc, root = swept
  out = root / "a" / report_folder(c)
  for name in ("report.md", "curves.png", "gap.png", "claims.json"):
    assert (out / name).stat().st_size > 0
  text = (out / "report.md").read_text()
  for words in ("Tuning grid", "Regime", "first passage", "held (w = 1)", "inner_lr=",
                "validation", "test", "match the tuning runs' argmin"):
    assert words in text
  rebuilt = report.rebuild(str(root / "a"))[0]
  rebuilt.pop("out")
  assert json.loads((out / "claims.json").read_text()) == rebuilt == doc


@pytest.mark.slow
def test_sigkilled_launch_relaunched_is_bit_identical_to_one_never_stopped(swept):
  """SIGKILL the launcher once its first family call is recorded, then relaunch: the
  relaunch computes only the calls left, and every row equals the uninterrupted run's."""
  c, doc, root = swept
  overrides = {k: c[k] for k in TINY if k != "model"} | {"data_dir": c.data_dir}
  overrides |= {f"model.{k}": v for k, v in TINY["model"].items()}  # a block: field by field
  argv = [sys.executable, "-m", "sweeps.launch", "--config=sweeps/configs/cocodc.py:quick",
          f"--workdir={root / 'b'}", *(f"--config.{k}={v}" for k, v in overrides.items())]
  launch = lambda: subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
  proc = launch()
  deadline = time.monotonic() + 300
  while not rows_in(root / "b")[0] and proc.poll() is None:
    assert time.monotonic() < deadline, "the launch recorded nothing"
    time.sleep(0.05)
  assert proc.poll() is None, "the launch finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  proc = launch()
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]
  assert "already done" in out
  assert rows_in(root / "b") == rows_in(root / "a")


@pytest.mark.slow
def test_sigint_stops_the_launch_at_a_tick(swept, sigint_launch):
  """Ctrl-C during the first vmapped call: exit 130, its runs interrupted, none failed
  (the contract: conftest.assert_interrupted)."""
  c, _, root = swept
  sigint_launch(tiny(c.data_dir, num_steps=64), root / "sigint")
