"""Running an experiment's runs: skip finished ones, resume unfinished ones, record results.

An experiment module (``sweeps/experiments/<name>.py``) exposes

* ``validate(config)`` -- raise :class:`~jaxfl.errors.ConfigError` on bad input;
* ``prepare(config) -> ctx`` -- load data etc.; may raise ConfigError (e.g. more clients
  than samples), so it runs before anything is written;
* ``families(config, ctx) -> [Family]`` -- its methods as families, each one jitted,
  vmapped program over seeds x its tuning grid (:mod:`sweeps.families`: the stages,
  the chunks, the selection on tuning seeds); the runs are the families' runs;
* ``report(config, db, out, config_hash) -> claims doc`` -- claims.json, report.md and
  plots from the database alone;

and, for runs that are host loops rather than families (a long run with checkpoints),

* ``run_specs(config) -> list[RunSpec]`` -- the runs: one per (method, seed);
* ``rounds(config, spec) -> int`` -- steps a run reports, for progress bars;
* ``execute(config, spec, ctx, run_dir, log_metrics, progress) -> info | None`` -- train
  one run, resuming from its checkpoints in ``run_dir``, calling ``log_metrics(step,
  sim_time, {name: value})`` as it goes and ``progress.update(...)``/``progress.log(...)``;
  it may return a dict of non-metric facts (backend, device) stored as the run's ``info``.

An experiment with both (FedAvg) runs its families on the local backend
(``vmap_seeds=True``, the launcher's default) unless ``vmappable(config)`` says no, and
its ``execute`` otherwise (``--novmap_seeds``, remote backends, several devices). An
experiment with families only runs a remote or ``--novmap_seeds`` run by computing the
family call that holds it (:func:`sweeps.families.execute`), so every path gives the
same rows. ``info(config, ctx) -> dict`` (optional) is stored with every family run.

A run is identified by (experiment, config hash, method, seed): relaunching the same
config skips runs that are done and resumes the rest (from their latest checkpoint, or
by recomputing the family calls that hold them). Metric writes are idempotent upserts,
so a resumed run ends with exactly the rows of an uninterrupted one.

Backends: ``local`` executes runs in this process and writes each metric as it comes.
Remote backends (:mod:`sweeps.backends`) execute :func:`execute_run` in workers (for an
experiment of families only, one task per family call: :mod:`sweeps.family_tasks`), which
return their metric rows; only this process writes the database (SQLite's WAL needs
every writer on the file's host). Checkpoints live under the workdir, which remote
workers must share (a cluster file system) for resumption to work. A run that fails is
recorded as ``failed``; the other runs still finish, then the first failure is raised.

A launch enters its runs as ``pending``; each becomes ``running`` when its computation
starts. On the local backend (:mod:`sweeps.sweep_local`) a stop request (Ctrl-C under
the launcher) ends the computation in progress within a tick, marks its runs
``interrupted`` and raises :class:`jaxfl.progress.Interrupted`; the next launch resumes
them like failed ones.

Multi-host (``jax.process_count() > 1``, after
:func:`sweeps.backends.maybe_initialize_distributed`):
every process runs every run's SPMD program together; process 0 alone reads and writes
the database and the reports, and tells the others which runs are left.

Grids of configs (the launcher's ``--sweep``) are in :mod:`sweeps.grid`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from sweeps import families as families_lib
from sweeps import provenance, report
from sweeps.progress import Progress
from sweeps.results import ResultsDB, config_hash, results_path
from sweeps.sweep_local import _chosen, _Quiet, _run_family, _run_here, execute, run_dir

_fmt = functools.partial(report.fmt, missing="null")  # claims.json spells a missing value null


class RunSpec(NamedTuple):
  method: str
  seed: int


class RunOutcome(NamedTuple):
  """What a remote run sends back: its metric rows and its info (or None)."""

  rows: list[tuple]
  info: dict | None


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

  info = execute(runner, config, spec, runner.prepare(config), directory, log_metrics, _Quiet())
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
    vmap_seeds: on the local backend, run the families of an experiment that also has
      a per-run ``execute`` as vmapped calls (families-only experiments always do).
    out: the report's folder relative to ``workdir`` (default:
      :func:`sweeps.provenance.report_folder`, ``<experiment>/<variant>[,<overrides>]-<hash>``).
    sweep_point: the grid point's overrides, when this config is one.

  Returns:
    The claims document (``None`` on processes other than 0 of a multi-host run).

  Raises:
    ConfigError: bad config or backend options, before anything is written.
    BaseException: the first failed run's error, after every other run has finished.
  """
  runner.validate(config)
  ctx = runner.prepare(config)  # may still reject the config: nothing is written before it
  fams = runner.families(config, ctx) if hasattr(runner, "families") else None
  submit = None
  if backend != "local":
    from sweeps import backends

    submit = backends.get(backend, backend_options or {})  # fails before anything is written
  # An experiment with its own per-run execute runs its run_specs (no tuning grid) unless
  # its families run here as vmapped calls.
  if fams is not None and hasattr(runner, "execute") and (
      submit is not None or not _vmapped(runner, config, fams, vmap_seeds)):
    fams = None
  specs = families_lib.specs(config, fams) if fams is not None else runner.run_specs(config)
  cfg = config.to_dict()
  digest = config_hash(cfg)
  experiment, variant = config.experiment, config.get("variant")
  out = os.path.join(workdir, out or provenance.report_folder(cfg, digest))
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
      # On a remote backend every run is handed to the workers now: running from the start.
      run_id, before = db.start_run(experiment, variant, spec.method, cfg, spec.seed,
                                    status="pending" if submit is None else "running")
      if before != "done":  # else finished by a concurrent launcher meanwhile
        started[spec] = run_id
    if started and writer:
      db.record_launch(experiment, digest, provenance.launch_facts(config, digest, backend))
    failures: list[BaseException] = []
    if submit is not None and fams is not None and not hasattr(runner, "execute"):
      get_submit = lambda: backends.get(backend, backend_options or {})
      failures += _run_tasks(fams, config, started, db, digest, sweep, submit, get_submit, cfg,
                             workdir)
    elif submit is not None:
      for spec, outcome in submit(execute_run, cfg, list(started), workdir):
        failures += _record(db, started[spec], spec, outcome, sweep)
    else:
      if _vmapped(runner, config, fams, vmap_seeds) and writer:
        info = provenance.run_info(runner, config, ctx)
        for fam in fams:
          failures += _run_family(fam, config, started, db, digest, sweep, info)
      else:
        for spec, run_id in started.items():
          failures += _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep)
    if failures:
      raise failures[0]
    if not writer:
      return None
    os.makedirs(out, exist_ok=True)
    doc = report.experiment_report(runner, config, db, out, digest)
  for cl in doc["claims"]:
    reference = (f"{cl['baseline']} {_fmt(cl['baseline_value'])} (margin {cl['margin']})"
                 if "baseline" in cl else f"threshold {cl['threshold']}")
    kind = f" ({cl['kind']})" if "kind" in cl else ""
    holds = {True: "holds", False: "DOES NOT HOLD", None: "is INCOMPLETE"}[cl["holds"]]
    print(f"claim {cl['id']}{kind} {holds}: {cl['method']} "
          f"{_fmt(cl['value'])} vs {reference} -> {os.path.join(out, 'claims.json')}", file=stream)
  return doc


def _vmapped(runner, config, fams, vmap_seeds: bool) -> bool:
  """Whether this launch runs the families as vmapped calls (else run by run)."""
  import jax

  if fams is None or jax.process_count() > 1:
    return False
  if not hasattr(runner, "execute"):
    return True  # families are the only way it runs
  return vmap_seeds and getattr(runner, "vmappable", lambda c: True)(config)


def _run_tasks(fams, c, started: dict, db, digest: str, sweep, submit, get_submit, cfg: dict,
               workdir: str) -> list:
  """A families experiment on a remote backend: each family call that holds unfinished
  runs is one task (:mod:`sweeps.family_tasks`); the tuning stage's first, then, with each
  method's point chosen from the recorded tuning runs, the reported stage's (from a second
  ``submit``: a backend's runs once). Returns the failures."""
  from sweeps import family_tasks

  todo = {(s.method, s.seed): run_id for s, run_id in started.items()}
  failures: list[BaseException] = []
  for stage in ("tune", "report"):
    tasks = [t for fam in fams for t in family_tasks.tasks(
        fam, c, stage, todo, _chosen(fam, c, db, digest, sweep) if stage == "report" else None)]
    if not tasks:
      continue
    submit = submit or get_submit()
    for task, outcome in submit(family_tasks.execute_task, cfg, tasks, workdir):
      for name, seed in task.runs:
        if (name, seed) in todo:
          got = outcome if isinstance(outcome, BaseException) else outcome[(name, seed)]
          got = got if isinstance(got, BaseException) else RunOutcome(*got)
          failures += _record(db, todo[(name, seed)], RunSpec(name, seed), got, sweep)
    submit = None
    if failures:  # a tuning run lost: nothing to choose from
      break
  if submit is not None:  # never used: let it stop what it started (a local Ray instance)
    list(submit(family_tasks.execute_task, cfg, [], workdir))
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
