"""The Air-FedGA experiment: config checks, tuning on separate seeds, claims and report rows.

The quick variant's claims themselves are measured by ``python -m sweeps.reproduce``
(REPRODUCTION.md); here a shrunken run checks the plumbing with numbers that follow
from its definition.
"""

import io
import json
import math

import numpy as np
import pytest

from jaxfl.errors import ConfigError
from sweeps import families, report
from sweeps.configs.air_fedga import get_config, get_sweep
from sweeps.experiments import air_fedga
from sweeps.grid import point_config
from sweeps.provenance import report_folder
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import run_sweep


def tiny(**overrides):
  c = get_config("quick")
  c.update({**dict(num_workers=8, num_seeds=2, num_tuning_seeds=1, beta0_grid=(0.5,),
                   learning_rate_grid=(0.05,), t_max=40.0, log_points=4, target_window=1,
                   group_candidates=(2,), compute_tiers=(1.0, 4.0), target_accuracy=0.5,
                   planner_draws=8), **overrides})
  return c


def test_configs_and_every_regime_point_validate():
  for variant in ("quick", "full"):
    air_fedga.validate(get_config(variant))
  grid = get_sweep()
  assert len(grid) == 9 and {p["comm.bits_per_param"] for p in grid} == {2.0, 8.0, 32.0}
  for point in grid:
    air_fedga.validate(point_config(get_config("quick"), point))
  with pytest.raises(ValueError, match="variant"):
    get_config("huge")


@pytest.mark.parametrize("field,value", [
    ("num_workers", 0), ("alpha", -1.0), ("jitter_low", 2.0), ("path_gain_low", 0.0),
    ("snr_db", math.nan), ("comm.fading", "nakagami"), ("group_candidates", (0,)),
    ("group_candidates", (30,)), ("beta0_grid", (0.0,)), ("beta0_grid", ()),
    ("target_accuracy", 1.5), ("compute_tiers", (1.0, -2.0)), ("comm.bits_per_param", 0.0),
    ("t_max", math.inf), ("staleness_exponent", -0.5), ("comm.download_time", -1.0),
    ("comm.rician_k", 1.0), ("comm.max_power", 0.0), ("learning_rate_grid", (0.0,)),
    ("learning_rate_grid", ()), ("validation", 1.0), ("validation", 0.0),
    ("target_window", 40), ("target_window", -1), ("comm.values_per_use", 3.0),
    ("low_bits_per_param", 0.0),
])
def test_validate_names_the_field(field, value):
  c = point_config(get_config("quick"), {field: value})
  with pytest.raises(ConfigError) as e:
    air_fedga.validate(c)
  assert e.value.field == field


def test_compute_tiers_split_the_workers_in_order():
  c = get_config("quick")
  np.testing.assert_array_equal(air_fedga.compute_times(c), np.repeat([1.0, 2.0, 4.0, 8.0], 5))
  c.update(dict(num_workers=6, compute_tiers=(1.0, 3.0), base_compute_time=2.0))
  np.testing.assert_array_equal(air_fedga.compute_times(c), [2, 2, 2, 6, 6, 6])


def test_prepare_groups_every_worker_once_per_method():
  c = tiny()
  ctx = air_fedga.prepare(c)
  assert set(ctx.per_seed) == {0, 1, 1000}  # evaluation and tuning seeds
  for data in ctx.per_seed.values():
    for method, groups in data.groups.items():
      assert sorted(np.concatenate(groups).tolist()) == list(range(8)), method
    assert len(data.groups["air_fedga"]) == 2  # the only candidate
    assert [len(g) for g in data.groups["air_fedga_random"]] == [4, 4]
    assert len(data.groups["fedasync"]) == 8 and len(data.groups["air_fedavg"]) == 1
  with pytest.raises(ConfigError, match="num_workers"):
    air_fedga.prepare(tiny(num_workers=1000))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("air_fedga")
  c = tiny(beta0_grid=(0.25, 0.5))
  doc = run_sweep(air_fedga, c, str(workdir), stream=io.StringIO())
  return workdir, doc, workdir / report_folder(c)


@pytest.mark.slow
def test_claims_follow_the_contract_and_rebuild_from_the_database(swept):
  workdir, doc, out = swept
  assert json.loads((out / "claims.json").read_text()) == doc
  assert [cl["id"] for cl in doc["claims"]] == [
      "time_to_target_vs_air_fedavg", "time_to_target_vs_fedasync",
      "time_to_target_vs_fedasync_low_bits", "planned_vs_random_grouping",
      "optimal_power_mse_vs_zero_forcing", "evaluation_noise_vs_gap"]
  # The MSE-optimal policy beating channel inversion is a theorem, the evaluation noise a
  # sanity bound: checks, not reproductions.
  assert [cl["kind"] for cl in doc["claims"]] == ["reproduction"] * 4 + ["check"] * 2
  for cl in doc["claims"][:5]:
    assert all(len(v) == 2 for v in cl["per_seed"].values())
  for cl in doc["claims"]:
    value, base = cl["value"], cl["baseline_value"]
    # "less time" is strict (a tie on the grid fails); the checks are "no worse than".
    better = (lambda a, b: a < b) if cl["id"].startswith(("time", "planned")) else (
        lambda a, b: a <= b)
    assert cl["holds"] == (value is not None and base is not None and better(value, base))
  # 3 x the standard error at the target on the 359 test images, in points.
  assert doc["claims"][5]["per_seed"]["noise_x3"] == [pytest.approx(300 * math.sqrt(.25 / 359))]
  mse = doc["claims"][4]["per_seed"]
  assert all(o <= z for o, z in zip(mse["optimal"], mse["zero_forcing"]))
  assert doc["claims"][0]["paper_reduction_percent"] == [29.9, 71.6]
  for name in ("report.md", "accuracy.png", "mse.png"):
    (out / name).unlink()
  (out / "claims.json").unlink()
  report.rebuild(str(workdir))
  assert json.loads((out / "claims.json").read_text()) == doc
  assert "Air-FedGA" in (out / "report.md").read_text()


@pytest.mark.slow
def test_rows_are_accuracy_on_the_time_grid_then_the_summary(swept):
  workdir, _, _ = swept
  with ResultsDB(results_path(workdir)) as db:
    runs = db.runs("air_fedga")
    # 6 methods x 2 seeds reported; every method x the same 2 grid points x 1 tuning seed.
    assert len(runs) == 12 + 12 and all(r["status"] == "done" for r in runs)
    sizes = {r["seed"] >= 1000: set() for r in runs}
    for r in runs:
      rows = db.metrics(run_id=r["id"])
      acc = [m for m in rows if m["name"] == "accuracy"]
      assert [m["step"] for m in acc] == [1, 2, 3, 4]
      assert [m["sim_time"] for m in acc] == [10.0, 20.0, 30.0, 40.0]
      summary = {m["name"]: m["value"] for m in rows if m["step"] == 4}
      method = r["method"].split("[")[0]
      synchronous = air_fedga.METHODS[method][1]
      if synchronous:
        assert summary["max_staleness"] == 0.0
      if r["seed"] >= 1000:  # a tuning run logs its grid point
        assert r["method"] == f"{method}[learning_rate=0.05,beta0={summary['beta0']:g}]"
      sizes[r["seed"] >= 1000].add(summary["eval_size"])
      assert summary["final_accuracy"] == acc[-1]["value"]
      if method == "air_fedga":
        assert summary["num_groups"] == 2.0
        assert summary["mse_optimal"] <= summary["mse_zero_forcing"]
        assert summary["mean_mse"] == pytest.approx(summary["mse_optimal"], rel=1e-5)
      if method in ("fedasync", "fedavg_digital"):
        assert "mean_mse" not in summary  # exact digital aggregation has no MSE row
      ok = [m["value"] >= 0.5 for m in acc]
      times = [m["sim_time"] for m in acc]
      # Held (window 1): the first grid time whose next point also meets the target.
      held = [t for i, t in enumerate(times[:-1]) if ok[i] and ok[i + 1]]
      assert summary.get("time_to_target") == (held[0] if held else None)
      first = [t for t, hit in zip(times, ok) if hit]
      assert summary.get("time_to_target_first") == (first[0] if first else None)
      # Reached on the grid => reached at an update at or before it. (Not the converse:
      # an asynchronous run may cross the target between grid times and fall back.)
      if first:
        assert summary["time_to_target_updates"] <= first[0]
  # Tuning runs evaluate on the validation split, reported runs on the test split.
  ds = air_fedga.prepare(tiny()).ds
  assert sizes == {True: {float(len(ds.y_val))}, False: {float(len(ds.y_test))}}
  assert len(ds.y_test) == 359 and len(ds.y_val) + len(ds.y_train) == 1438


@pytest.mark.slow
def test_every_method_is_tuned_on_the_same_grid_on_the_tuning_seeds_only(swept):
  workdir, _, _ = swept
  with ResultsDB(results_path(workdir)) as db:
    t2t = db.final_values("air_fedga", "time_to_target")
    acc = db.final_values("air_fedga", "final_accuracy")
    beta0 = db.final_values("air_fedga", "beta0")
    updates = db.final_values("air_fedga", "updates")
  name = lambda m, b: f"{m}[learning_rate=0.05,beta0={b:g}]"
  for m in air_fedga.METHODS:  # synchronous ones too: beta0 is their server step size
    # One tuning seed: the smallest held time to target (never reached: last), then the
    # larger final accuracy, then the earlier grid point.
    key = {b: (t2t.get(name(m, b), {}).get(1000, math.inf), -acc[name(m, b)][1000], i)
           for i, b in enumerate((0.25, 0.5))}
    best = min(key, key=key.get)
    assert beta0[m] == {0: best, 1: best}, m
  for b in (0.25, 0.5):  # a quarter of the bits: at least as many uploads in t_max
    assert updates[name("fedasync_low_bits", b)][1000] >= updates[name("fedasync", b)][1000]


@pytest.mark.slow
def test_a_run_computed_alone_is_its_vmapped_call_bit_for_bit(swept):
  """The remote-worker path computes the family call holding the run: the same rows."""
  workdir, _, _ = swept
  c = tiny(beta0_grid=(0.25, 0.5))
  ctx = air_fedga.prepare(c)
  rows, _ = families.execute(air_fedga.families(c, ctx), c, "fedasync", 1)
  alone = {(s, k): v for s, _, vals in rows for k, v in vals.items()}
  with ResultsDB(results_path(workdir)) as db:
    (run,) = [r for r in db.runs("air_fedga", method="fedasync") if r["seed"] == 1]
    stored = {(m["step"], m["name"]): m["value"] for m in db.metrics(run_id=run["id"])}
  assert alone == stored


def test_regime_report_tabulates_each_points_ratios(tmp_path):
  def doc(ga, avg, fa):
    cl = lambda id_, base: {"id": id_, "value": ga, "baseline_value": base}
    return {"claims": [cl("time_to_target_vs_air_fedavg", avg),
                       cl("time_to_target_vs_fedasync", fa)]}

  points = []
  for tiers, bits, d in [((1.0, 8.0), 32.0, doc(100.0, 200.0, 150.0)),
                         ((1.0, 1.0), 32.0, doc(90.0, 90.0, 45.0)),
                         ((1.0, 8.0), 2.0, doc(100.0, None, 50.0))]:
    point = {"compute_tiers": tiers, "comm.bits_per_param": bits}
    points.append((point, point_config(get_config("quick"), point), d))
  air_fedga.report_sweep(str(tmp_path), points)
  table = (tmp_path / "regime.md").read_text()
  assert "| 1 | 32 | 90 | 90 | 45 | 1 | 2 |" in table  # equal speeds: no gain over Air-FedAvg
  assert "| 8 | 32 | 100 | 200 | 150 | 0.5 | 0.6667 |" in table
  assert "| 8 | 2 | 100 | — | 50 | — | 2 |" in table  # a baseline that never reached it
  assert table.index("| 1 | 32 |") < table.index("| 8 | 2 |") < table.index("| 8 | 32 |")
  assert (tmp_path / "regime.png").stat().st_size > 0
