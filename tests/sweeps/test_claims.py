"""claims.json helpers: medians with missing values and the holds rule."""

import functools
import json

import pytest

from sweeps import claims

claim = functools.partial(claims.claim, kind="reproduction", statement="s", paper="p")


def test_median_odd_even_and_missing():
  assert claims.median([3.0, 1.0, 2.0]) == 2.0
  assert claims.median([4.0, 1.0, 2.0, 3.0]) == 2.5
  # Missing counts as worst: for "lower", None is +inf.
  assert claims.median([1.0, None, 2.0], better="lower") == 2.0
  assert claims.median([1.0, None, None], better="lower") is None
  assert claims.median([5.0, None, 7.0], better="higher") == 5.0


def test_baseline_claim_with_margin():
  c = claim(id="x", metric="acc", better="higher", method="a",
            baseline="b", margin=3.0,
            per_seed={"a": [90.0, 91.0, 92.0], "b": [93.0, 94.0, 95.0]})
  assert c["value"] == 91.0 and c["baseline_value"] == 94.0 and c["holds"] is True
  c = claim(id="x", metric="acc", better="higher", method="a",
            baseline="b", margin=2.9, per_seed={"a": [91.0], "b": [94.0]})
  assert c["holds"] is False


def test_threshold_claim_lower_is_better_and_null():
  c = claim(id="t", metric="time", better="lower", method="a",
            threshold=10.0, per_seed={"a": [9.0, 12.0, 8.0]})
  assert c["value"] == 9.0 and c["holds"] is True
  c = claim(id="t", metric="time", better="lower", method="a",
            threshold=10.0, per_seed={"a": [None, None, 1.0]})
  assert c["value"] is None and c["holds"] is False


def test_mean_aggregate_and_missing_values():
  assert claims.mean([1.0, 2.0, 6.0]) == 3.0
  assert claims.mean([1.0, None]) is None and claims.mean([]) is None
  # Median 1.0 would miss the threshold 2; the mean 3.0 meets it, and the entry says so.
  c = claim(id="t", metric="r", better="higher", method="a",
            threshold=2.0, aggregate="mean", per_seed={"a": [1.0, 0.0, 8.0]})
  assert c["value"] == 3.0 and c["holds"] is True and c["aggregate"] == "mean"
  c = claim(id="t", metric="l", better="lower", method="a",
            baseline="b", aggregate="mean", per_seed={"a": [1.0, None], "b": [2.0, 2.0]})
  assert c["value"] is None and c["baseline_value"] == 2.0 and c["holds"] is False
  with pytest.raises(ValueError, match="aggregate"):
    claim(id="t", metric="m", better="higher", method="a",
          threshold=1.0, aggregate="max", per_seed={"a": [1.0]})


def test_claim_needs_exactly_one_reference():
  with pytest.raises(ValueError):
    claim(id="t", metric="m", better="higher", method="a",
          per_seed={"a": [1.0]})


def test_write_claims(tmp_path):
  path = tmp_path / "claims.json"
  c = claim(id="t", metric="m", better="higher", method="a",
            threshold=0.5, per_seed={"a": [1.0]})
  claims.write_claims(path, experiment="e", variant="quick", seeds=[0], claims=[c])
  doc = json.loads(path.read_text())
  assert doc == {"experiment": "e", "variant": "quick", "seeds": [0], "claims": [c]}


def test_kind_is_required_and_recorded():
  c = claims.claim(id="t", kind="check", statement="s", paper="p", metric="m", better="higher",
                   method="a", threshold=10.0, per_seed={"a": [18.8]})
  assert c["kind"] == "check" and c["holds"] is True
  with pytest.raises(ValueError, match="kind: expected one of"):
    claim(id="t", kind="theorem", metric="m", better="higher", method="a", threshold=1.0,
          per_seed={"a": [1.0]})
  with pytest.raises(TypeError, match="kind"):
    claims.claim(id="t", statement="s", paper="p", metric="m", better="higher", method="a",
                 threshold=1.0, per_seed={"a": [1.0]})
