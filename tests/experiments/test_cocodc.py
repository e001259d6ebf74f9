"""The CoCoDC experiment: config checks, tuning from the database, claims from the curves.

The quick variant's claims are measured by ``python -m sweeps.reproduce``; here a shrunken
run (a one-block model, 16 steps) checks the plumbing with numbers that follow from the
definitions: the tuned point is the grid's argmin, each claim's per-seed values are
recomputed from the logged curves, and a launch killed and relaunched ends with the
rows of one never stopped, bit for bit.
"""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxfl.errors import ConfigError
from sweeps import families, report
from sweeps.configs import cocodc as cocodc_config
from sweeps.experiments import cocodc
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
            outer_lr_grid=(0.4, 0.9), alpha_grid=(0.5,), lam0_grid=(0.5,))


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
    ("num_fragments", 7), ("num_workers", 99), ("alpha_grid", (0.5, 1.5)),
    ("lam0_grid", (-0.1,)), ("outer_lr_grid", ()), ("fragment_pattern", "random"),
    ("min_step_reduction", 1.0), ("model.num_heads", 3), ("model.d_ff", 0),
    ("wan.bandwidth", 0.0), ("wan.latency", -1.0), ("outer_momentum", 1.0),
])
def test_validate_names_the_field(field, value):
  c = cocodc_config.get_config("quick")
  *path, name = field.split(".")
  (c[path[0]] if path else c)[name] = value
  with pytest.raises(ConfigError) as e:
    cocodc.validate(c)
  assert e.value.field == field


def test_runs_are_the_grid_on_tuning_seeds_then_the_methods_on_the_seeds():
  c = cocodc_config.get_config("quick")
  fams = cocodc.families(c, None)  # the runs need no data
  specs = families.specs(c, fams)
  tuning = [s for s in specs if s.seed >= c.seed + families.TUNING_OFFSET]
  # DiLoCo: 2 lrs; Streaming and CoCoDC: 2 lrs x 2 knobs x 2 overlaps; one tuning seed.
  assert len(tuning) == 2 + 8 + 8
  assert "cocodc_tau12[outer_lr=0.7,lam0=0.5]" in {s.method for s in tuning}
  reported = specs[len(tuning):]
  assert {s.method for s in reported} == {"diloco", "streaming_tau2", "streaming_tau12",
                                          "cocodc_tau2", "cocodc_tau12"}
  assert sorted({s.seed for s in reported}) == [0, 1, 2, 3]
  # One compiled program per family: tuning and reported calls have the same batch.
  assert [families.batch_size(f, c) for f in fams] == [4, 8, 8]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("cocodc")
  c = tiny(str(root / "tfds"))
  doc = run_sweep(cocodc, c, str(root / "a"), stream=io.StringIO())
  return c, doc, root


@pytest.mark.slow
def test_tuned_point_is_the_grid_argmin_of_validation_loss(swept):
  c, _, root = swept
  with ResultsDB(results_path(str(root / "a"))) as db:
    loss = db.final_values("cocodc", "eval_loss")
    lr = db.final_values("cocodc", "outer_lr")
    for family, tau in (("diloco", 0), ("streaming", 1), ("cocodc", 5)):
      options = {p["outer_lr"]: loss[families.point_name(cocodc.method_name(family, tau), p)]
                 [1000] for p in cocodc.grid(c, family)}
      best = min(options, key=options.get)
      for s in (0, 1):
        assert lr[cocodc.method_name(family, tau)][s] == best
    runs = db.runs("cocodc")
    assert len(runs) == 2 + 2 * 2 * 2 + 5 * 2 and all(r["status"] == "done" for r in runs)
    assert all(r["info"]["params"] > 0 for r in runs)


@pytest.mark.slow
def test_claims_follow_from_the_logged_curves(swept):
  c, doc, root = swept
  claims = {cl["id"]: cl for cl in doc["claims"]}
  with ResultsDB(results_path(str(root / "a"))) as db:
    curve = lambda m, s: db.series("cocodc", m, "eval_loss")[s]
    for i, s in enumerate((0, 1)):
      steps_s, _, loss_s = curve("streaming_tau5", s)
      steps_c, _, loss_c = curve("cocodc_tau5", s)
      assert steps_s == list(range(0, 17, 4))  # the initial model, then every eval_every
      a = cocodc.first_reach(steps_c, loss_c, loss_s[-1])
      b = cocodc.first_reach(steps_s, loss_s, loss_s[-1])
      want = None if a is None else 1 - a / b
      got = claims["steps_to_streaming_loss_long_tau"]["per_seed"]["cocodc"][i]
      assert (got is None and want is None) or got == pytest.approx(want, abs=1e-12)
      assert claims["final_loss_vs_streaming_long_tau"]["per_seed"]["streaming"][i] == loss_s[-1]
      # DiLoCo evaluates every H = 8 steps and pays the whole model's all-reduce each time.
      steps_d, times_d, _ = curve("diloco", s)
      assert steps_d == [0, 8, 16]
      full, _ = cocodc.fragment_comm_seconds(c)
      assert times_d[-1] == pytest.approx(16 * c.step_time + 2 * full, rel=1e-5)
  cl = claims["final_loss_vs_streaming_long_tau"]
  per = cl["per_seed"]
  assert cl["aggregate"] == "mean"
  assert cl["value"] == pytest.approx(np.mean(per["cocodc"]), rel=1e-12)
  assert cl["holds"] == (cl["value"] <= cl["baseline_value"])
  red = claims["steps_to_streaming_loss_long_tau"]
  vals = red["per_seed"]["cocodc"]
  expected = None if None in vals else float(np.mean(vals))
  assert red["value"] == (pytest.approx(expected) if expected is not None else None)
  assert red["holds"] == (expected is not None and expected >= c.min_step_reduction)


@pytest.mark.slow
def test_report_rebuilds_from_the_database(swept):
  c, doc, root = swept
  out = root / "a" / "cocodc"
  for name in ("report.md", "curves.png", "gap.png", "claims.json"):
    assert (out / name).stat().st_size > 0
  text = (out / "report.md").read_text()
  assert "Tuning grid" in text and "Regime" in text
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


def test_first_reach_interpolates_and_reports_never():
  assert cocodc.first_reach([0, 4, 8], [3.0, 2.0, 1.0], 2.5) == 2.0
  assert cocodc.first_reach([0, 4], [3.0, 2.0], 3.5) == 0.0
  assert cocodc.first_reach([0, 4], [3.0, 2.0], 1.0) is None
  assert math.isclose(cocodc.first_reach([0, 10, 20], [2.0, 2.5, 1.0], 1.5), 50 / 3)
