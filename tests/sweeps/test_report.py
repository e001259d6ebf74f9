"""sweeps.report: the report vocabulary on known inputs."""

import os

import numpy as np
import pytest

from sweeps import report


def test_table_formats_cells_and_keeps_strings():
  text = report.table(["a", "b", "c"], [["x", 1.23456, None], ["y", 7, "**no**"]])
  assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| x | 1.235 | — |",
                               "| y | 7 | **no** |"]


def test_mean_std_skips_missing_and_non_finite_values():
  assert report.mean_std([1.0, 3.0]) == "2 ± 1.4"
  assert report.mean_std([2.0, None, float("nan")]) == "2 ± 0 (2 missing)"
  assert report.mean_std([None]) == "—"


def test_claims_and_metric_tables():
  doc = {"claims": [{"id": "c1", "kind": "reproduction", "method": "m", "value": 0.5,
                     "baseline": "b", "baseline_value": 0.25, "margin": 0.0, "holds": True},
                    {"id": "c2", "kind": "check", "method": "m", "value": None,
                     "threshold": 2.0, "holds": False}]}
  rows = report.claims_table(doc).splitlines()
  assert rows[2] == "| c1 | reproduction | m | 0.5 | b | 0.25 | 0 | yes |"
  assert rows[3] == "| c2 | check | m | — | — | — | 2 | **no** |"
  per_seed = {"loss": {"a": [1.0, 3.0], "b": [2.0, 2.0]}}
  rows = report.metric_table(per_seed, [("loss", "final loss")], ["a", "b"],
                             {"a": "A"}).splitlines()
  assert rows[0] == "| metric (mean ± std over seeds) | A | b |"
  assert rows[2] == "| final loss | 2 ± 1.4 | 2 ± 0 |"


def test_write_markdown_separates_blocks_and_drops_empty_ones(tmp_path):
  path = report.write_markdown(str(tmp_path), ["# t", "", "para", report.image("p.png")])
  with open(path) as f:
    assert f.read() == "# t\n\npara\n\n![p](p.png)\n"


def test_seed_band_draws_the_mean_and_the_min_max_band(tmp_path):
  # Two seeds evaluated at the same steps; the second has one more point (cut off) and
  # other simulated times (the abscissa is their mean).
  by_seed = {0: ([0, 10], [0.0, 2.0], [1.0, 3.0]),
             1: ([0, 10, 20], [0.0, 4.0, 6.0], [3.0, 5.0, 9.0])}
  path = os.path.join(tmp_path, "c.png")
  with report.figure(path, 1, 2) as (ax1, ax2):
    xs, ys = report.seed_band(ax1, by_seed, label="m")
    xt, _ = report.seed_band(ax2, by_seed, x="time", scale=10.0)
    assert report.seed_band(ax2, {}) is None
  np.testing.assert_array_equal(xs, [0, 10])
  np.testing.assert_array_equal(ys, [[1, 3], [3, 5]])
  np.testing.assert_array_equal(xt, [0, 3])
  line = ax1.get_lines()[0]
  np.testing.assert_array_equal(line.get_ydata(), [2, 4])
  np.testing.assert_array_equal(ax2.get_lines()[0].get_ydata(), [20, 40])
  assert ax1.get_legend() is not None and ax2.get_legend() is None  # only labelled lines
  assert os.path.getsize(path) > 0
  with pytest.raises(ValueError, match="x: expected 'step' or 'time'"):
    report.seed_band(ax1, by_seed, x="round")


def test_figure_closes_and_writes_nothing_when_its_body_fails(tmp_path):
  path = os.path.join(tmp_path, "f.png")
  plt = report.pyplot()
  before = len(plt.get_fignums())
  with pytest.raises(RuntimeError), report.figure(path):
    raise RuntimeError("boom")
  assert not os.path.exists(path) and len(plt.get_fignums()) == before
