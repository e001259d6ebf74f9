"""The PRISM experiment and the shapes benchmark: config checks, plumbing, determinism.

The quick variant's claims are measured by ``python -m sweeps.reproduce``; here a shrunken
run (a one-block denoiser, 30 steps, 24 samples) checks that every claim is recomputed from
the logged values, that the structure statistics match their definitions on known inputs,
that inpainting keeps the kept slots exactly, and that a rerun is bit-identical.
"""

import io
import json
import os

import numpy as np
import pytest

from jaxfl.errors import ConfigError
from shapes import data, metrics
from sweeps import families
from sweeps.configs import bench_shapes as bench_config
from sweeps.configs import prism as prism_config
from sweeps.experiments import bench_shapes, prism
from sweeps.provenance import report_folder
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import run_sweep


def tiny(data_dir, **overrides):
  c = prism_config.get_config("quick")
  c.update({**dict(data_dir=data_dir, num_seeds=2, num_train=40, points_per_part=24,
                   diffusion_steps=8, train_steps=30, warmup_steps=5, batch_size=16,
                   num_samples=24, num_eval=6, eval_points=32, num_pictures=2), **overrides})
  c.tokens.num_modes = 4
  c.denoiser.update(width=16, depth=1, heads=2)
  return c


def set_field(c, field, value):
  """``c[field] = value`` for a top-level or a block's (``denoiser.heads``) field."""
  *path, name = field.split(".")
  (c[path[0]] if path else c)[name] = value


def test_configs_validate():
  for variant in ("quick", "full"):
    prism.validate(prism_config.get_config(variant))
    bench_shapes.validate(bench_config.get_config(variant))
  for module in (prism_config, bench_config):
    with pytest.raises(ValueError, match="variant"):
      module.get_config("huge")


@pytest.mark.parametrize("field,value", [
    ("category", "sofa"), ("slots", "sorted"), ("denoiser.prediction", "x0"),
    ("num_eval", 5000), ("warmup_steps", 3000), ("denoiser.heads", 3), ("points_per_part", 8),
    ("max_pattern_tv", 2.0), ("label_weight", 0.0), ("diffusion_steps", 1),
    ("num_pictures", -1), ("tokens.num_modes", 5000), ("tokens.sigma", -0.1),
    ("tokens.alpha", float("inf")), ("denoiser.kind", "unet"), ("denoiser.depth", 0),
])
def test_prism_validate_names_the_field(field, value):
  c = prism_config.get_config("quick")
  set_field(c, field, value)
  with pytest.raises(ConfigError) as e:
    prism.validate(c)
  assert e.value.field == field


def test_an_mlp_over_shuffled_slots_is_refused_as_the_denoiser_kind():
  c = prism_config.get_config("quick")
  c.slots = "set"
  with pytest.raises(ConfigError, match="an MLP needs ordered slots") as e:
    prism.validate(c)
  assert e.value.field == "denoiser.kind"
  c.denoiser.kind = "set"
  prism.validate(c)  # the full variant's pairing


@pytest.mark.parametrize("field,value", [("ddim_steps", 500), ("slots", "x"),
                                         ("denoiser.heads", 5), ("tokens.num_modes", 65)])
def test_bench_validate_names_the_field(field, value):
  c = bench_config.get_config("quick")
  set_field(c, field, value)
  with pytest.raises(ConfigError) as e:
    bench_shapes.validate(c)
  assert e.value.field == field


def test_pair_correlation_known_answers():
  s = data.generate("chair", 300, seed=0, points_per_part=24)
  # The generator draws back width = seat width x U(0.85, 1): strongly correlated.
  r = prism.pair_correlation("chair", s.labels, s.points, s.exists)
  assert r > 0.85
  # Pairing each back with another chair's seat breaks the tie: |r| at noise level
  # (about 1 / sqrt(N) = 0.06 for N = 270).
  shuffled = s.points.copy()
  shuffled[:, 1] = np.roll(s.points[:, 1], 7, axis=0)
  both = s.exists[:, 0] & np.roll(s.exists[:, 1], 7)
  exists = s.exists.copy()
  exists[:, 0] = exists[:, 1] = both
  assert abs(prism.pair_correlation("chair", s.labels, shuffled, exists)) < 0.2
  # Fewer than three shapes with both parts: no correlation.
  assert prism.pair_correlation("chair", s.labels, s.points[:2], s.exists[:2]) is None


def test_validation_and_test_references_are_distinct_held_out_shapes(tmp_path):
  c = tiny(str(tmp_path))
  d = prism.run.seed_data(c, 0)
  n, k = c.num_samples, c.num_eval  # 24 and 6
  fresh = data.generate("chair", n + k, seed=0, split="test", points_per_part=24)
  alone = data.generate("chair", n, seed=0, split="test", points_per_part=24)
  # The held-out real sample is what num_samples shapes alone would be (generation is in
  # order), so the validation references are the first 6 of it, the references the fixed
  # design was chosen against; the test references are the 6 shapes after it.
  np.testing.assert_array_equal(d.test.points, alone.points)
  np.testing.assert_array_equal(d.test.points, fresh.points[:n])
  val, test = d.refs["validation"].clouds, d.refs["test"].clouds
  assert val.shape == test.shape == (k, c.eval_points, 3)
  expect = lambda sl: metrics.normalize(metrics.resample(fresh.points[sl], fresh.exists[sl],
                                                         c.eval_points, 0))
  np.testing.assert_array_equal(val, expect(slice(0, k)))
  np.testing.assert_array_equal(test, expect(slice(n, n + k)))
  # No test reference is a validation one: every cross Chamfer distance is positive.
  assert np.asarray(metrics.pairwise_chamfer(val, test)).min() > 1e-4


def test_no_method_has_a_tuning_grid():
  """The protocol's equal budget holds trivially: no family tunes anything."""
  c = prism_config.get_config("quick")
  fams = prism.families(c, prism.prepare(c))
  assert [len(f.grid) for f in fams] == [1, 1]
  assert [families.tuning_runs(f, c) for f in fams] == [[], []]
  assert {r.stage for f in fams for r in families.reported_runs(f, c)} == {"report"}
  assert prism.run.REFERENCES["report"][0] == "test"


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  root = tmp_path_factory.mktemp("prism")
  c = tiny(str(root / "tfds"))
  doc = run_sweep(prism, c, str(root / "a"), stream=io.StringIO())
  return c, doc, root


@pytest.mark.slow
def test_claims_are_recomputed_from_the_logged_values(swept):
  c, doc, root = swept
  with ResultsDB(results_path(str(root / "a"))) as db:
    final = {n: db.final_values("prism", n) for n in ("1nna_cd", "pattern_tv", "violations",
                                                     "cov_cd", "heldout_pattern_tv")}
  seeds = prism.seeds(c)
  claims = {cl["id"]: cl for cl in doc["claims"]}
  assert set(claims) == {"nna_vs_global_pca", "nna_vs_independent", "cov_vs_global_pca",
                         "mmd_vs_global_pca", "pattern_tv", "rule_violations"}
  gap = [final["1nna_cd"]["global_pca"][s] - final["1nna_cd"]["prism"][s] for s in seeds]
  assert claims["nna_vs_global_pca"]["value"] == pytest.approx(np.mean(gap), abs=1e-12)
  assert claims["nna_vs_global_pca"]["holds"] == (np.mean(gap) >= c.min_nna_gap)
  tv = np.mean([final["pattern_tv"]["prism"][s] for s in seeds])
  assert claims["pattern_tv"]["value"] == pytest.approx(tv, abs=1e-12)
  assert claims["pattern_tv"]["heldout_real"] == pytest.approx(
      np.mean([final["heldout_pattern_tv"]["prism"][s] for s in seeds]), abs=1e-12)
  cov = {m: np.mean([final["cov_cd"][m][s] for s in seeds]) for m in ("prism", "global_pca")}
  assert claims["cov_vs_global_pca"]["holds"] == (cov["prism"] >= cov["global_pca"])
  for s in seeds:
    for m in prism.METHODS:
      # 1-NNA over 2 x 6 shapes is a multiple of 1/12; TV and violations lie in [0, 1].
      assert final["1nna_cd"][m][s] * 12 == pytest.approx(round(final["1nna_cd"][m][s] * 12))
      assert 0 <= final["pattern_tv"][m][s] <= 1
      assert 0 <= final["violations"][m][s] <= 1
  with open(os.path.join(root, "a", report_folder(c), "claims.json")) as f:
    assert json.load(f) == doc


@pytest.mark.slow
def test_claims_use_the_test_references_and_validation_is_beside(swept):
  """A baseline's logged 1-NNA is its samples' against the test references, its val_
  metrics against the validation ones (host-only, so recomputed here exactly)."""
  c, doc, root = swept
  ctx = prism.prepare(c)
  with ResultsDB(results_path(str(root / "a"))) as db:
    final = {n: db.final_values("prism", n) for n in ("1nna_cd", "val_1nna_cd", "mmd_cd",
                                                     "val_mmd_cd")}
  for s in prism.seeds(c):
    d = ctx.seed_data(s)
    test_only = prism.run.run_baseline(c, d, "independent", s, ("test",))
    val_only = prism.run.run_baseline(c, d, "independent", s, ("validation",))
    assert final["1nna_cd"]["independent"][s] == test_only["1nna_cd"]
    assert final["mmd_cd"]["independent"][s] == test_only["mmd_cd"]
    assert final["val_1nna_cd"]["independent"][s] == val_only["val_1nna_cd"]
    assert final["val_mmd_cd"]["independent"][s] == val_only["val_mmd_cd"]
    assert test_only["mmd_cd"] != val_only["val_mmd_cd"]  # other shapes, other distances
  claims = {cl["id"]: cl for cl in doc["claims"]}
  assert claims["nna_vs_independent"]["baseline_value"] == pytest.approx(
      np.mean([final["1nna_cd"]["independent"][s] for s in prism.seeds(c)]), abs=1e-12)
  md = (root / "a" / report_folder(c) / "report.md").read_text()
  assert "1-NNA-CD, validation refs" in md and "No method has a tuning grid" in md


@pytest.mark.slow
def test_report_has_pictures_and_inpainting_keeps_slots(swept):
  c, _, root = swept
  out = os.path.join(root, "a", report_folder(c))
  for f in ("report.md", "gallery.png", "editing.png"):
    assert os.path.getsize(os.path.join(out, f)) > 0
  with ResultsDB(results_path(str(root / "a"))) as db:
    info = next(r["info"] for r in db.runs("prism", method="prism") if r["seed"] == c.seed)
  assert info["edits"]["kept_unchanged"] is True
  assert np.asarray(info["gallery"]["coeffs"]).shape == (c.num_pictures, 5, c.tokens.num_modes)
  # Every kept part of the source shape is present in each edit.
  kept = [lab not in prism.EDITED["chair"] and e
          for lab, e in zip(data.CATEGORIES["chair"], info["source"]["exists"], strict=True)]
  assert np.asarray(info["edits"]["exists"])[:, kept].all()


@pytest.mark.slow
def test_a_run_computed_alone_is_bit_identical(swept):
  """The remote-worker path (the family call holding the run, in a fresh context)."""
  c, _, root = swept
  fams = prism.families(c, prism.prepare(c))
  with ResultsDB(results_path(str(root / "a"))) as db:
    for method in ("prism", "independent"):
      rows, info = families.execute(fams, c, method, c.seed)
      (run,) = [r for r in db.runs("prism", method=method) if r["seed"] == c.seed]
      assert {m["name"]: m["value"] for m in db.metrics(run_id=run["id"])} == rows[0][2]
      assert "host" in run["info"]["environment"]  # where it ran: added by the sweep
      assert info == ({k: v for k, v in run["info"].items() if k != "environment"} or None)
      assert (info is None) == (method != "prism")


@pytest.mark.slow
def test_bench_matmul_form_agrees_and_run_reports():
  c = bench_config.get_config("quick")
  c.update(diffusion_steps=8, ddim_steps=2, sample_batch=4, nna_shapes=5, nna_points=40,
           timing_repeats=1)
  c.tokens.num_modes = 4
  c.denoiser.update(width=16, depth=1, heads=2)
  r = bench_shapes.run_repeat(c, 0, log=lambda *a: None)
  assert r["nna_plane_value"] == r["nna_matmul_value"]
  assert r["nna_plane_value"] * 10 == pytest.approx(round(r["nna_plane_value"] * 10))
  assert r["ddim_speedup"] > 0 and r["ddpm_shapes_per_s"] > 0
  a = np.random.default_rng(0).normal(size=(3, 50, 3)).astype(np.float32)
  from shapes import metrics
  np.testing.assert_allclose(metrics.pairwise_chamfer(a, a, sq_dists=metrics.matmul_sq_dists),
                             metrics.pairwise_chamfer(a, a), atol=1e-5)


@pytest.mark.slow
def test_sigint_stops_the_launch_during_training(swept, sigint_launch):
  """Ctrl-C while PRISM trains its 2 seeds in one call: it stops at a tick of the training
  scan, exit 130, the runs interrupted (the contract: conftest.assert_interrupted)."""
  c, _, root = swept
  sigint_launch(tiny(c.data_dir, train_steps=300), root / "sigint")
