"""One experiment protocol: methods declared as families, each one jitted, vmapped program.

An experiment declares ``families(config, ctx) -> [Family]``. A family is the methods that
share one program: ``simulate(key, inputs, hparams)`` is one run as a pure function of
its seed's key, the run's arrays and the hyperparameters a tuning grid varies (traced, so
a grid is a ``vmap`` like the seeds). The sweep (:func:`sweeps.sweep.run_sweep`) runs a
family in two stages, each as calls of ``jit(vmap(simulate))`` over a batch of runs:

1. **tune**: every method at every grid point on the tuning seeds (:func:`tuning_seeds`,
   ``seed + 1000 + i``, never reported), recorded as the run
   ``point_name(method, point)``; each method keeps the point its ``select`` ranks
   first over those seeds (ties: the earlier point). A one-point grid skips this stage.
2. **report**: every method on the reported seeds (:func:`seeds`) at its chosen point,
   recorded under the method's name, its hyperparameters logged at the last step, so the
   chosen values reach the report from the database alone.

Every call has the family's batch size (the larger stage's run count unless ``batch`` is
set; a short chunk is padded with copies of its first run), so a family compiles once.
A stage's runs are cut into the same chunks on every launch, and a chunk holding an
unfinished run is computed whole: a relaunch after a kill recomputes exactly the calls
it had not recorded, and ends bit-identical (on CPU) to a launch never stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from sweeps.claims import mean as claims_mean
from sweeps.claims import median as claims_median

TUNING_OFFSET = 1000  # tuning seeds are seed + TUNING_OFFSET + i: never a reported seed
STAGES = ("tune", "report")
# The data split each stage evaluates on: selection never sees the test split.
SPLITS = {"tune": "validation", "report": "test"}


def seeds(c) -> list[int]:
  """The reported seeds: ``seed, seed + 1, ..., seed + num_seeds - 1``."""
  return [c.seed + i for i in range(c.num_seeds)]


def tuning_seeds(c) -> list[int]:
  """The seeds hyperparameters are chosen on (none when the config has no
  ``num_tuning_seeds``)."""
  return [c.seed + TUNING_OFFSET + i for i in range(c.get("num_tuning_seeds", 0))]


Finals = Mapping[str, float | None]  # a run's last value of each metric (None: not finite)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
  """Methods that run as one program.

  Attributes:
    name: the family's name (progress lines).
    methods: the reported methods it runs.
    simulate: ``simulate(key, inputs, hparams) -> (sim_time [T], {metric: [T]})``, one run
      (``key = PRNGKey(seed)``, ``hparams`` the grid point's ``{name: scalar}``);
      traceable: no Python control flow on values.
    steps: the step of each of the ``T`` rows (static).
    inputs: ``inputs(method, seed, stage) -> pytree`` of the run's arrays (its data, its
      method's settings...; ``stage`` is ``"tune"`` or ``"report"``, e.g. validation or
      test windows); leaves have the same shape for every run of the family. ``None``:
      everything comes from the key.
    grid: the tuning grid, one ``{hyperparameter: value}`` per point (same keys).
    select: ``select([finals of each tuning seed]) -> sort key`` of one grid point, lower
      first; required when the grid has several points (see :func:`lowest`).
    optional: metrics NaN where they have no value (a summary logged at the last step, a
      target never reached); those are left out of the rows. A non-finite value of any
      other metric is a divergence: a reported run fails, a tuning run is recorded
      without it and ``diverged = 1`` (its point is then ranked last by :func:`lowest`).
    batch: runs per call (memory); default the larger stage's run count.
    post: ``post(run, outputs) -> (sim_time [T], {metric: [T]}[, info])``: host work on
      one run's slice of ``simulate``'s outputs (decoding samples, metrics in NumPy), and
      optionally a dict stored as the run's info; ``None`` when ``simulate`` returns the
      rows' arrays itself.
  """

  name: str
  methods: tuple[str, ...]
  simulate: Callable
  steps: tuple[int, ...]
  inputs: Callable[[str, int, str], Any] | None = None
  grid: tuple[Mapping[str, float], ...] = ({},)
  select: Callable[[list[Finals]], Any] | None = None
  optional: tuple[str, ...] = ()
  batch: int | None = None
  post: Callable[[Run, Any], tuple] | None = None

  def __post_init__(self):
    object.__setattr__(self, "methods", tuple(self.methods))
    object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
    object.__setattr__(self, "grid", tuple(dict(p) for p in self.grid))
    if not self.methods or not self.steps or not self.grid:
      raise ValueError(f"family {self.name!r}: methods, steps and grid must be non-empty")
    if len({tuple(p) for p in self.grid}) != 1:
      raise ValueError(f"family {self.name!r}: every grid point needs the same keys")
    if len(self.grid) > 1 and self.select is None:
      raise ValueError(f"family {self.name!r}: a grid of {len(self.grid)} points needs select")
    if self.batch is not None and self.batch < 1:
      raise ValueError(f"family {self.name!r}: batch must be positive, got {self.batch}")


class Run(NamedTuple):
  """One run of a family: recorded as ``(name, seed)``."""

  name: str  # the method, or for a tuning run point_name(method, point)
  method: str
  seed: int
  point: Mapping[str, float]
  stage: str


def point_name(method: str, point: Mapping[str, float]) -> str:
  """A tuning run's method name: ``streaming_tau2[outer_lr=0.7,alpha=0.5]``.

  >>> point_name("fedasync", {"beta0": 0.3})
  'fedasync[beta0=0.3]'
  """
  if not point:
    return method
  return f"{method}[{','.join(f'{k}={float(v):g}' for k, v in point.items())}]"


def tuning_runs(fam: Family, c) -> list[Run]:
  """Every method x grid point x tuning seed (none for a one-point grid)."""
  if len(fam.grid) == 1:
    return []
  return [Run(point_name(m, p), m, s, p, "tune")
          for m in fam.methods for p in fam.grid for s in tuning_seeds(c)]


def reported_runs(fam: Family, c, chosen: Mapping[str, Mapping[str, float]] | None = None
                  ) -> list[Run]:
  """Every method on the reported seeds at its chosen point (``chosen[method]``; the only
  point of a one-point grid)."""
  point = lambda m: fam.grid[0] if len(fam.grid) == 1 else (chosen or {}).get(m, {})
  return [Run(m, m, s, point(m), "report") for m in fam.methods for s in seeds(c)]


def batch_size(fam: Family, c) -> int:
  return fam.batch or max(len(tuning_runs(fam, c)), len(reported_runs(fam, c)))


def chunks(runs: Sequence[Run], batch: int) -> list[list[Run]]:
  """``runs`` cut into consecutive calls of at most ``batch`` runs."""
  return [list(runs[i:i + batch]) for i in range(0, len(runs), batch)]


class Program:
  """A family's ``jit(vmap(simulate))``, traced and compiled on its first call only."""

  def __init__(self, fam: Family):
    import jax

    self.fam = fam
    self.compiled = False
    self._fn = jax.jit(jax.vmap(fam.simulate))

  def __call__(self, runs: Sequence[Run], batch: int) -> Any:
    """``runs`` (padded to ``batch``) as one call: ``simulate``'s outputs, ``[n, ...]``."""
    import jax

    n = len(runs)
    padded = list(runs) + [runs[0]] * (batch - n)
    keys = jax.vmap(jax.random.PRNGKey)(np.asarray([r.seed for r in padded], np.uint32))
    fam = self.fam
    inputs = None if fam.inputs is None else _stack(
        [fam.inputs(r.method, r.seed, r.stage) for r in padded])
    hparams = {k: np.asarray([r.point[k] for r in padded], np.float32) for k in fam.grid[0]}
    outputs = jax.device_get(self._fn(keys, inputs, hparams))
    self.compiled = True
    return jax.tree.map(lambda v: np.asarray(v)[:n], outputs)


def _stack(trees: list) -> Any:
  import jax

  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def results(fam: Family, run: Run, outputs: Any, i: int
            ) -> tuple[np.ndarray, dict[str, np.ndarray], dict | None]:
  """Run ``i`` of a call's outputs as ``(sim_time [T], {metric: [T]}, info)``."""
  import jax

  mine = jax.tree.map(lambda v: v[i], outputs)
  out = fam.post(run, mine) if fam.post is not None else mine
  sim_time, values, info = (*out, None) if len(out) == 2 else out
  return np.asarray(sim_time), {k: np.asarray(v) for k, v in values.items()}, info


def rows(fam: Family, run: Run, sim_time: np.ndarray, values: Mapping[str, np.ndarray]
         ) -> tuple[list[tuple], str | None]:
  """A run's ``(step, sim_time, {metric: value})`` rows (from :func:`results`), and the
  first non-finite required metric (``"<metric> at step <s>"``) or ``None``.

  Optional metrics' NaNs are left out; a tuning run's non-finite values are left out and
  ``diverged = 1`` logged at its last step; the run's hyperparameters are logged at its
  last step.
  """
  out, bad = [], None
  for t, step in enumerate(fam.steps):
    vals = {}
    for k, v in values.items():
      x = float(v[t])
      if math.isfinite(x):
        vals[k] = x
      elif k not in fam.optional and bad is None:
        bad = f"{k} at step {step}"
    time = float(sim_time[t])
    out.append((step, time if math.isfinite(time) else None, vals))
  out[-1][2].update({k: float(v) for k, v in run.point.items()})
  if bad is not None and run.stage == "tune":
    out[-1][2]["diverged"] = 1.0
  return out, bad


def finals(run_rows: Sequence[tuple]) -> dict[str, float]:
  """A run's last value of each metric, from its rows."""
  last: dict[str, float] = {}
  for _, _, vals in run_rows:
    last.update(vals)
  return last


def choose(fam: Family, c, results: Mapping[tuple[str, int], Finals]
           ) -> dict[str, dict[str, float]]:
  """Each method's grid point ranked first by ``fam.select`` over the tuning seeds.

  ``results[(point_name(method, point), seed)]`` holds each tuning run's finals.

  Raises:
    KeyError: a tuning run has no results.
  """
  if len(fam.grid) == 1:
    return {m: fam.grid[0] for m in fam.methods}
  chosen = {}
  for m in fam.methods:
    keys = [fam.select([results[(point_name(m, p), s)] for s in tuning_seeds(c)])
            for p in fam.grid]
    chosen[m] = fam.grid[min(range(len(keys)), key=lambda j: (keys[j], j))]
  return chosen


def lowest(*metrics: str, aggregate: str = "mean") -> Callable[[list[Finals]], tuple]:
  """A ``select`` ranking points by each metric's ``aggregate`` over the tuning seeds,
  lowest first (later metrics break ties; a metric name starting with ``-`` ranks
  highest first). A missing value or a diverged run counts as the worst, so a point
  where a seed diverged or never reached a target ranks behind one where none did.

  >>> select = lowest("loss")
  >>> select([{"loss": 2.0}, {"loss": 4.0}]) < select([{"loss": 1.0}, {"diverged": 1.0}])
  True
  """
  if aggregate not in ("mean", "median"):
    raise ValueError(f"aggregate: expected 'mean' or 'median', got {aggregate!r}")

  def select(runs: list[Finals]) -> tuple:
    key = []
    for name in metrics:
      sign, metric = (-1.0, name[1:]) if name.startswith("-") else (1.0, name)
      vals = [None if r.get("diverged") else r.get(metric) for r in runs]
      better = "higher" if sign < 0 else "lower"
      agg = (claims_mean if aggregate == "mean" else claims_median)(vals, better)
      key.append(math.inf if agg is None else sign * agg)
    return tuple(key)

  return select


def outcomes(fam: Family, runs: Sequence[Run], outputs: Any, info: dict | None = None):
  """Each run of one call as ``(run, (rows, info))``, or ``(run, DivergenceError)`` for a
  reported run whose required metric is not finite; ``info`` is merged into every run's."""
  from jaxfl.loop import DivergenceError

  for i, r in enumerate(runs):
    sim_time, values, run_info = results(fam, r, outputs, i)
    run_rows, bad = rows(fam, r, sim_time, values)
    if bad is not None and r.stage == "report":
      yield r, DivergenceError(f"{r.name} seed {r.seed}: {bad} is not finite")
    else:
      yield r, (run_rows, {**(info or {}), **(run_info or {})} or None)


def specs(c, fams: Sequence[Family]):
  """Every family's runs as :class:`~sweeps.sweep.RunSpec`: tuning first, then reported."""
  from sweeps.sweep import RunSpec

  out = [RunSpec(r.name, r.seed) for f in fams for r in tuning_runs(f, c)]
  return out + [RunSpec(r.name, r.seed) for f in fams for r in reported_runs(f, c)]


def compute(fam: Family, c, program: Program, stage_runs: Sequence[Run], todo,
            on_chunk: Callable[[list[Run], tuple], None], log=None) -> None:
  """Compute the chunks of ``stage_runs`` holding a run in ``todo`` (a set of
  ``(name, seed)``), calling ``on_chunk(chunk, (sim_time, values))`` after each."""
  batch = batch_size(fam, c)
  for chunk in chunks(stage_runs, batch):
    if not any((r.name, r.seed) in todo for r in chunk):
      continue
    if log is not None:
      stage = chunk[0].stage
      log(f"{fam.name} {stage}: {len(chunk)} runs as one vmapped call"
          + ("" if program.compiled else " (compiling it first)"))
    on_chunk(chunk, program(chunk, batch))


def execute(fams: Sequence[Family], c, name: str, seed: int, log=None
            ) -> tuple[list[tuple], dict | None]:
  """One run's rows and info, computed without a database (a remote worker,
  ``--novmap_seeds``).

  Computes the chunk holding the run, so its rows are those of the vmapped path; a
  reported run of a tuned family computes the family's tuning stage first.

  Raises:
    KeyError: no family has the run.
    FloatingPointError: a reported run's required metric is not finite.
  """
  for fam in fams:
    tune = tuning_runs(fam, c)
    names = {r.name for r in tune} | set(fam.methods)
    if name not in names:
      continue
    program = Program(fam)
    tuned: dict[tuple[str, int], dict] = {}  # each tuning run's finals
    got: dict[tuple[str, int], tuple] = {}

    def keep(chunk, out):
      for i, r in enumerate(chunk):
        sim_time, values, info = results(fam, r, out, i)
        rr, bad = rows(fam, r, sim_time, values)
        got[(r.name, r.seed)] = (rr, bad, info)
        tuned[(r.name, r.seed)] = finals(rr)

    if any(r.name == name and r.seed == seed for r in tune):
      compute(fam, c, program, tune, {(name, seed)}, keep, log)
    else:
      compute(fam, c, program, tune, {(r.name, r.seed) for r in tune}, keep, log)
      compute(fam, c, program, reported_runs(fam, c, choose(fam, c, tuned)),
              {(name, seed)}, keep, log)
    run_rows, bad, info = got[(name, seed)]
    if bad is not None and name in fam.methods:
      raise FloatingPointError(f"{name} seed {seed}: {bad} is not finite")
    return run_rows, info
  raise KeyError(f"no family runs {name!r}")
