"""Running an experiment's runs: skip finished ones, resume unfinished ones, record results.

An experiment module (``sweeps/experiments/<name>.py``) exposes

* ``validate(config)`` -- raise :class:`~jaxfl.errors.ConfigError` on bad input;
* ``prepare(config) -> ctx`` -- load data etc.; may raise ConfigError (e.g. more clients
  than samples), so it runs before anything is written;
* ``run_specs(config) -> list[RunSpec]`` -- the runs: one per (method, seed);
* ``rounds(config, spec) -> int`` -- steps a run reports, for progress bars;
* ``execute(config, spec, ctx, run_dir, log_metrics, progress) -> info | None`` -- train
  one run, resuming from its checkpoints in ``run_dir``, calling ``log_metrics(step,
  sim_time, {name: value})`` as it goes and ``progress.update(...)``/``progress.log(...)``;
  it may return a dict of non-metric facts (backend, device) stored as the run's ``info``;
* ``report(config, db, out, config_hash) -> claims doc`` -- claims.json, report.md and
  plots from the database alone;

and optionally

* ``make_simulate(config, ctx, method) -> Simulation | None`` -- a method's whole run as
  one pure function of the seed's key and inputs. On the local backend the seeds of such
  a method run as **one** ``jit(vmap(simulate))`` call instead of one run after another
  (``vmap_seeds=True``, the launcher's default); the rows are those of ``execute`` up to
  float32 rounding (vmapping batches the seeds' matmuls), and each path is bit-reproducible
  on its own. Such a group keeps no checkpoints: a group that is killed reruns whole.

A run is identified by (experiment, config hash, method, seed): relaunching the same
config skips runs that are done and resumes the rest from their latest checkpoint.
Metric writes are idempotent upserts, so a resumed run ends with exactly the rows of an
uninterrupted one.

Backends: ``local`` executes runs in this process and writes each metric as it comes.
Remote backends (:mod:`sweeps.backends`) execute :func:`execute_run` in workers, which
return their metric rows; only this process writes the database (SQLite's WAL needs
every writer on the file's host). Checkpoints live under the workdir, which remote
workers must share (a cluster file system) for resumption to work. A run that fails is
recorded as ``failed``; the other runs still finish, then the first failure is raised.

Multi-host (``jax.process_count() > 1``, after
:func:`sweeps.backends.maybe_initialize_distributed`):
every process runs every run's SPMD program together; process 0 alone reads and writes
the database and the reports, and tells the others which runs are left.

Grids: :func:`run_grid` runs every point of an experiment's ``get_sweep()`` as its own
config (its own hash), reports each point under ``<experiment>/sweep/<point>/`` and
tabulates every point's claims in ``<experiment>/sweep.md``; an experiment may add
``report_sweep(folder, [(point, config, claims doc)])`` for a report across the points.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from sweeps.progress import Progress
from sweeps.results import ResultsDB, config_hash, results_path


class RunSpec(NamedTuple):
  method: str
  seed: int


class Simulation(NamedTuple):
  """A method's run as one pure function, so that its seeds can be vmapped together.

  Attributes:
    simulate: ``simulate(key, inputs) -> (sim_time [T], {name: [T]})``: the simulated
      time and the metrics at each of the ``steps``; ``key`` is ``PRNGKey(seed)``.
      Must be traceable (no Python control flow on values).
    inputs: ``inputs(seed) -> pytree`` of the seed's arrays (its data partition, device
      profiles...), stacked over seeds for the vmapped call; leaves must have the same
      shape for every seed. ``None`` when everything comes from the key.
    steps: the step of each of the ``T`` rows (static).
    optional: metrics that are NaN where they have no value (a summary logged at the
      last step only; a target never reached): those are left out. A NaN in any other
      metric means the run diverged.
  """

  simulate: Callable
  inputs: Callable[[int], Any] | None
  steps: Sequence[int]
  optional: tuple[str, ...] = ()


class RunOutcome(NamedTuple):
  """What a remote run sends back: its metric rows and its info (or None)."""

  rows: list[tuple]
  info: dict | None


def run_dir(workdir: str, experiment: str, digest: str, spec: RunSpec) -> str:
  """Where one run keeps its checkpoints:
  ``<workdir>/<experiment>/runs/<hash>/<method>-seed<seed>``."""
  return os.path.join(workdir, experiment, "runs", digest, f"{spec.method}-seed{spec.seed}")


class _Quiet:
  """Progress stand-in for workers and non-zero processes: updates dropped, messages printed."""

  def __init__(self, echo: bool = True):
    self.echo = echo

  def update(self, *args, **kwargs):
    del args, kwargs

  def log(self, message: str):
    if self.echo:
      print(message, flush=True)


def execute_run(config_dict: dict, spec: RunSpec, workdir: str) -> RunOutcome:
  """Execute one run in a worker process; returns its ``(step, sim_time, values)`` rows.

  Everything it needs travels as plain data (the config as a dict), so Ray and submitit
  can ship it; data is prepared in the worker.
  """
  import ml_collections

  from sweeps import experiments

  config = ml_collections.ConfigDict(config_dict)
  runner = experiments.get(config.experiment)
  directory = run_dir(workdir, config.experiment, config_hash(config_dict), spec)
  os.makedirs(directory, exist_ok=True)
  # Rows also go to a file beside the checkpoints: a worker that resumes from a checkpoint
  # logs only the later steps, and the earlier ones must still reach the driver.
  path = os.path.join(directory, "rows.jsonl")

  def log_metrics(step, sim_time, values):
    with open(path, "a") as f:
      f.write(json.dumps([step, sim_time, dict(values)]) + "\n")

  info = runner.execute(config, spec, runner.prepare(config), directory, log_metrics, _Quiet())
  latest: dict[int, tuple] = {}
  with open(path) as f:
    for step, sim_time, values in map(json.loads, f):
      old = latest.get(step, (step, sim_time, {}))[2]
      latest[step] = (step, sim_time, {**old, **values})  # a replayed step: its last values
  return RunOutcome([latest[s] for s in sorted(latest)], info)


def _is_writer() -> bool:
  """Whether this process writes the database and reports: the only one, or process 0."""
  import jax

  return jax.process_index() == 0


def _agree(todo: list[bool]) -> list[bool]:
  """Process 0's list of runs left, on every process of a multi-host run."""
  import jax

  if jax.process_count() == 1:
    return todo
  from jax.experimental import multihost_utils

  mask = multihost_utils.broadcast_one_to_all(np.asarray(todo, np.int32))
  return [bool(v) for v in np.asarray(mask)]


def run_sweep(runner, config, workdir: str, *, backend: str = "local",
              backend_options: dict[str, Any] | None = None, stream=None,
              vmap_seeds: bool = True, out: str | None = None,
              sweep_point: Mapping[str, Any] | None = None) -> dict | None:
  """Run (or resume) every run of ``config``, then write its report.

  Args:
    runner: the experiment module (see the module docstring).
    config: the validated-or-not config; it is validated first.
    workdir: holds ``results.sqlite``, checkpoints and reports.
    backend: ``local``, ``ray`` or ``slurm`` (:mod:`sweeps.backends`).
    backend_options: the backend's options (``--ray.*``, ``--slurm.*``).
    stream: where progress goes (default stderr).
    vmap_seeds: on the local backend, run the seeds of methods with a
      ``make_simulate`` as one vmapped call.
    out: the report's folder relative to ``workdir`` (default: the experiment's name).
    sweep_point: the grid point's overrides, when this config is one.

  Returns:
    The claims document (``None`` on processes other than 0 of a multi-host run).

  Raises:
    ConfigError: bad config or backend options, before anything is written.
    BaseException: the first failed run's error, after every other run has finished.
  """
  runner.validate(config)
  ctx = runner.prepare(config)  # may still reject the config: nothing is written before it
  specs = runner.run_specs(config)
  cfg = config.to_dict()
  digest = config_hash(cfg)
  experiment, variant = config.experiment, config.get("variant")
  out = os.path.join(workdir, out or experiment)
  submit = None
  if backend != "local":
    from sweeps import backends

    submit = backends.get(backend, backend_options or {})  # fails before anything is written
  writer = _is_writer()
  with contextlib.ExitStack() as stack:
    db = stack.enter_context(ResultsDB(results_path(workdir))) if writer else None
    todo_mask = [True] * len(specs)
    if writer:
      db.register_report(experiment, digest, os.path.relpath(out, workdir), sweep_point)
      done = {(r["method"], r["seed"]) for r in db.runs(experiment, status="done")
              if r["config_hash"] == digest}
      todo_mask = [(s.method, s.seed) not in done for s in specs]
    todo = [s for s, t in zip(specs, _agree(todo_mask)) if t]
    sweep = stack.enter_context(Progress(len(specs), desc=f"{experiment}/{variant}",
                                         done=len(specs) - len(todo), stream=stream)) \
        if writer else None
    started = {}
    for spec in todo:
      if not writer:
        started[spec] = None
        continue
      run_id, before = db.start_run(experiment, variant, spec.method, cfg, spec.seed)
      if before != "done":  # else finished by a concurrent launcher meanwhile
        started[spec] = run_id
    failures: list[BaseException] = []
    if submit is not None:
      for spec, outcome in submit(execute_run, cfg, list(started), workdir):
        failures += _record(db, started[spec], spec, outcome, sweep)
    else:
      groups = _simulation_groups(runner, config, ctx, started) if vmap_seeds else {}
      grouped = {s for _, specs_ in groups.values() for s in specs_}
      for method, (sim, group) in groups.items():
        failures += _run_vmapped(sim, method, group, started, db, sweep)
      for spec, run_id in started.items():
        if spec not in grouped:
          failures += _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep)
    if failures:
      raise failures[0]
    if not writer:
      return None
    os.makedirs(out, exist_ok=True)
    doc = runner.report(config, db, out, digest)
  for cl in doc["claims"]:
    reference = (f"{cl['baseline']} {_fmt(cl['baseline_value'])} (margin {cl['margin']})"
                 if "baseline" in cl else f"threshold {cl['threshold']}")
    print(f"claim {cl['id']} {'holds' if cl['holds'] else 'DOES NOT HOLD'}: {cl['method']} "
          f"{_fmt(cl['value'])} vs {reference} -> {os.path.join(out, 'claims.json')}", file=stream)
  return doc


def _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep) -> list:
  """Execute one run in this process; returns ``[error]`` if it failed, else ``[]``."""
  if db is None:  # a non-zero process of a multi-host run: compute, log nothing
    runner.execute(config, spec, ctx, run_dir(workdir, config.experiment, digest, spec),
                   lambda *a: None, _Quiet(echo=False))
    return []

  def log_metrics(step, sim_time, values):
    db.log_metrics(run_id, step, sim_time, values)

  try:
    with sweep.run(f"{spec.method} seed {spec.seed}", runner.rounds(config, spec)) as prog:
      info = runner.execute(config, spec, ctx,
                            run_dir(workdir, config.experiment, digest, spec), log_metrics, prog)
  except Exception as e:  # noqa: BLE001 -- recorded, raised once every run has finished
    db.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
    return [e]
  except BaseException as e:  # Ctrl-C: record and stop now
    db.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
    raise
  if info:
    db.set_info(run_id, info)
  db.finish_run(run_id, "done")
  return []


def _simulation_groups(runner, config, ctx, started) -> dict[str, tuple[Simulation, list]]:
  """Methods whose runs this launch can vmap over seeds: ``{method: (simulation, specs)}``."""
  import jax

  make = getattr(runner, "make_simulate", None)
  if make is None or jax.process_count() > 1:
    return {}
  groups: dict[str, list[RunSpec]] = {}
  for spec in started:
    groups.setdefault(spec.method, []).append(spec)
  sims = {m: make(config, ctx, m) for m in groups}
  return {m: (sims[m], specs) for m, specs in groups.items() if sims[m] is not None}


def simulate_seeds(sim: Simulation, seeds: Sequence[int], inputs: Sequence[Any] | None = None
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Every seed's run as one ``jit(vmap(simulate))`` call: ``(sim_time [S, T], {name: [S, T]})``.

  ``inputs``: each seed's inputs, when not ``sim.inputs(seed)`` (e.g. one seed under
  several settings).
  """
  import jax

  keys = jax.vmap(jax.random.PRNGKey)(np.asarray(seeds, np.uint32))
  if inputs is None and sim.inputs is None:
    return jax.device_get(jax.jit(jax.vmap(lambda k: sim.simulate(k, None)))(keys))
  per_seed = inputs if inputs is not None else [sim.inputs(s) for s in seeds]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *per_seed)
  return jax.device_get(jax.jit(jax.vmap(sim.simulate))(keys, stacked))


def simulation_rows(sim: Simulation, sim_time, values, i: int) -> list[tuple]:
  """Seed ``i``'s ``(step, sim_time, {name: value})`` rows, optional NaNs left out."""
  rows = []
  for t, step in enumerate(sim.steps):
    vals = {k: float(v[i, t]) for k, v in values.items()
            if not (k in sim.optional and np.isnan(v[i, t]))}
    rows.append((step, None if np.isnan(sim_time[i, t]) else float(sim_time[i, t]), vals))
  return rows


def _run_vmapped(sim: Simulation, method, group, started, db, sweep) -> list:
  """Run ``group``'s seeds as one vmapped call and record each seed's rows (or divergence)."""
  from jaxfl.loop import DivergenceError

  seeds = [s.seed for s in group]
  name = f"{method} seeds {','.join(map(str, seeds))} (one vmapped call)"
  try:
    with sweep.run(name, 1, runs=len(group)) as prog:
      sim_time, values = simulate_seeds(sim, seeds)
      # The bar's summary: the seeds' mean simulated time and accuracy at the last step.
      shown = {k: v[:, -1] for k, v in (("sim_time", sim_time),
                                        ("acc", values.get("accuracy"))) if v is not None}
      prog.update(1, **{k: float(np.mean(v)) for k, v in shown.items() if np.all(np.isfinite(v))})
  except BaseException as e:
    for spec in group:
      db.finish_run(started[spec], "failed", error=f"{type(e).__name__}: {e}")
    raise
  failures = []
  for i, spec in enumerate(group):
    rows = simulation_rows(sim, sim_time, values, i)
    bad = [(step, k) for step, _, vals in rows for k, v in vals.items() if not np.isfinite(v)]
    if bad:
      step, metric = bad[0]
      e = DivergenceError(f"{method} seed {spec.seed}: {metric} is not finite at step {step}")
      db.finish_run(started[spec], "failed", error=f"DivergenceError: {e}")
      sweep.log(f"failed: {e}")
      failures.append(e)
      continue
    db.log_metrics_many(started[spec], rows)
    db.finish_run(started[spec], "done")
  return failures


def _record(db, run_id: int, spec: RunSpec, outcome, sweep) -> list:
  """Write a remote run's rows (or its failure) as the driver receives it."""
  with sweep.run(f"{spec.method} seed {spec.seed}", 1) as prog:
    if isinstance(outcome, BaseException):
      db.finish_run(run_id, "failed", error=f"{type(outcome).__name__}: {outcome}")
      prog.log(f"failed: {type(outcome).__name__}: {outcome}")
      return [outcome]
    db.log_metrics_many(run_id, outcome.rows)
    if outcome.info:
      db.set_info(run_id, outcome.info)
    db.finish_run(run_id, "done")
    prog.update(1)
  return []


def point_name(point: Mapping[str, Any]) -> str:
  """A grid point's folder name: ``alpha=0.1,clients_per_round=5`` (keys sorted)."""
  text = ",".join(f"{k}={_value_text(v)}" for k, v in sorted(point.items()))
  return "".join(ch if ch.isalnum() or ch in "=,.-_+" else "_" for ch in text)


def _value_text(v) -> str:
  return "-".join(map(_value_text, v)) if isinstance(v, (list, tuple)) else str(v)


def point_config(config, point: Mapping[str, Any]):
  """``config`` with a grid point's values; unknown keys raise ConfigError naming them."""
  from jaxfl.errors import ConfigError

  c = config.copy_and_resolve_references()
  with c.unlocked():
    for key, value in point.items():
      if key not in c:
        raise ConfigError(f"get_sweep()[{key!r}]", "a field of the config", key)
      try:
        c[key] = value
      except TypeError as e:
        raise ConfigError(f"get_sweep()[{key!r}]", f"a value of the field's type ({e})",
                          value) from None
  return c


def run_grid(runner, config, grid: Sequence[Mapping[str, Any]], workdir: str,
             **kwargs) -> list[dict]:
  """Run every grid point's sweep; write ``<experiment>/sweep.md``; return the claims docs.

  Every point's config is validated before any point runs. ``kwargs`` go to
  :func:`run_sweep` (backend, vmap_seeds...).
  """
  from jaxfl.errors import ConfigError

  if not grid:
    raise ConfigError("--sweep", "an experiment whose get_sweep() returns grid points", [])
  points = [(dict(p), point_config(config, p)) for p in grid]
  for _, c in points:
    runner.validate(c)
  docs = []
  for point, c in points:
    out = os.path.join(config.experiment, "sweep", point_name(point))
    docs.append(run_sweep(runner, c, workdir, out=out, sweep_point=point, **kwargs))
  if all(d is not None for d in docs):
    from sweeps import report

    folder = os.path.join(workdir, config.experiment)
    report.write_sweep_table(folder, [(p, os.path.join("sweep", point_name(p)), d)
                                      for (p, _), d in zip(points, docs)])
    if hasattr(runner, "report_sweep"):  # e.g. a regime map over the grid
      runner.report_sweep(folder, [(p, c, d) for (p, c), d in zip(points, docs)])
  return docs


def _fmt(v) -> str:
  return "null" if v is None else f"{v:.4g}"
