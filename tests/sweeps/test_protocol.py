"""The evaluation protocol end to end: a claim that rests on an under-tuned baseline fails.

Two methods with known answers: a run's final validation/test loss is
``(lr - best_m)^2 + floor_m`` (plus ``seed / 1000``), with the proposed method's best
step size 0.1 and floor 0.10, the baseline's best 0.4 and floor 0.05. At the proposed
method's step size the baseline ends at ``0.09 + 0.05 = 0.14`` and the claim "the proposed
method ends lower" holds; given the same grid over its own step size, the baseline picks
0.4, ends at 0.05, and the claim must fail.
"""

import io

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sweeps import claims as claims_lib
from sweeps import families
from sweeps.sweep import run_sweep

BEST = {"proposed": 0.1, "baseline": 0.4}
FLOOR = {"proposed": 0.10, "baseline": 0.05}


def config(**overrides):
  c = ml_collections.ConfigDict(dict(experiment="protocol", variant="quick", seed=0,
                                     num_seeds=3, num_tuning_seeds=2, lrs=(0.1, 0.4)))
  c.update(overrides)
  return c


class Protocol:
  """One family per method, each with its own grid (the protocol: the same number of points
  over each method's own step size); the report's claim is computed from the database."""

  @staticmethod
  def validate(c):
    del c

  @staticmethod
  def prepare(c):
    del c

  @staticmethod
  def families(c, ctx):
    del ctx

    def simulate(key, inputs, hparams):
      del key
      best, floor, seed = inputs
      loss = (hparams["lr"] - best) ** 2 + floor + seed / 1000.0
      return jnp.zeros([1]), {"loss": loss[None]}

    grids = {"proposed": c.lrs, "baseline": c.get("baseline_lrs", c.lrs)}
    return [families.Family(
        name=m, methods=(m,), simulate=simulate, steps=(1,), grid=[{"lr": v} for v in grids[m]],
        select=families.lowest("loss"),
        inputs=lambda m_, seed, stage: (np.float32(BEST[m_]), np.float32(FLOOR[m_]),
                                        np.float32(seed))) for m in BEST]

  @staticmethod
  def report(c, db, out, digest):
    del out
    final = db.final_values(c.experiment, "loss", config_hash=digest)
    per_seed = {m: [final[m][s] for s in families.seeds(c)] for m in BEST}
    return {"claims": [claims_lib.claim(
        id="loss_vs_baseline", kind="reproduction", statement="proposed ends lower",
        paper="toy", metric="loss", better="lower", method="proposed", baseline="baseline",
        per_seed=per_seed)], "chosen": db.final_values(c.experiment, "lr")}


def claim(tmp_path, **overrides):
  doc = run_sweep(Protocol, config(**overrides), str(tmp_path), stream=io.StringIO())
  return doc["claims"][0], doc["chosen"]


def test_a_baseline_held_at_the_proposed_step_size_loses(tmp_path):
  cl, chosen = claim(tmp_path, baseline_lrs=(0.1,))
  assert chosen["baseline"] == {0: 0.1, 1: 0.1, 2: 0.1}
  assert cl["value"] == pytest.approx(0.101) and cl["baseline_value"] == pytest.approx(0.141)
  assert cl["holds"]


def test_the_same_budget_for_the_baseline_makes_the_claim_fail(tmp_path):
  cl, chosen = claim(tmp_path)
  # Each method picks its own best step size on the tuning seeds ...
  assert chosen["proposed"] == {0: pytest.approx(0.1), 1: pytest.approx(0.1),
                                2: pytest.approx(0.1)}
  assert chosen["baseline"] == {0: pytest.approx(0.4), 1: pytest.approx(0.4),
                                2: pytest.approx(0.4)}
  # ... and the better-tuned baseline wins on the reported seeds: the claim fails.
  assert cl["value"] == pytest.approx(0.101) and cl["baseline_value"] == pytest.approx(0.051)
  assert not cl["holds"]
