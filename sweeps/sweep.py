"""Running an experiment's runs: skip finished ones, resume unfinished ones, record results.

An experiment module (``sweeps/experiments/<name>.py``) that stores its results in the
database exposes

* ``validate(config)`` -- raise :class:`~jaxfl.errors.ConfigError` on bad input;
* ``prepare(config) -> ctx`` -- load data etc.; may raise ConfigError (e.g. more clients
  than samples), so it runs before anything is written;
* ``run_specs(config) -> list[RunSpec]`` -- the runs: one per (method, seed);
* ``rounds(config, spec) -> int`` -- steps a run reports, for progress bars;
* ``execute(config, spec, ctx, run_dir, log_metrics, progress)`` -- train one run,
  resuming from its checkpoints in ``run_dir``, calling ``log_metrics(step, sim_time,
  {name: value})`` as it goes and ``progress.update(...)``/``progress.log(...)``;
* ``report(config, db, out, config_hash) -> claims doc`` -- claims.json, report.md and
  plots from the database alone.

A run is identified by (experiment, config hash, method, seed): relaunching the same
config skips runs that are done and resumes the rest from their latest checkpoint.
Metric writes are idempotent upserts, so a resumed run ends with exactly the rows of an
uninterrupted one.

Backends: ``local`` executes runs in this process and writes each metric as it comes.
Remote backends (:mod:`sweeps.backends`) execute :func:`execute_run` in workers, which
return their metric rows; only this process writes the database (SQLite's WAL needs
every writer on the file's host). Checkpoints live under the workdir, which remote
workers must share (a cluster file system) for resumption to work.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from sweeps.progress import Progress
from sweeps.results import ResultsDB, config_hash, results_path


class RunSpec(NamedTuple):
  method: str
  seed: int


def run_dir(workdir: str, experiment: str, digest: str, spec: RunSpec) -> str:
  """Where one run keeps its checkpoints: ``<workdir>/<experiment>/runs/<hash>/<method>-seed<seed>``."""
  return os.path.join(workdir, experiment, "runs", digest, f"{spec.method}-seed{spec.seed}")


class _Quiet:
  """Progress stand-in for workers: updates are dropped, messages printed."""

  def update(self, *args, **kwargs):
    del args, kwargs

  def log(self, message: str):
    print(message, flush=True)


def execute_run(config_dict: dict, spec: RunSpec, workdir: str) -> list[tuple]:
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

  runner.execute(config, spec, runner.prepare(config), directory, log_metrics, _Quiet())
  latest: dict[int, tuple] = {}
  with open(path) as f:
    for step, sim_time, values in map(json.loads, f):
      old = latest.get(step, (step, sim_time, {}))[2]
      latest[step] = (step, sim_time, {**old, **values})  # a replayed step: its last values
  return [latest[s] for s in sorted(latest)]


def run_sweep(runner, config, workdir: str, *, backend: str = "local",
              backend_options: dict[str, Any] | None = None, stream=None) -> dict:
  """Run (or resume) every run of ``config``, then write its report; returns the claims doc."""
  runner.validate(config)
  ctx = runner.prepare(config)  # may still reject the config: nothing is written before it
  specs = runner.run_specs(config)
  cfg = config.to_dict()
  digest = config_hash(cfg)
  experiment, variant = config.experiment, config.get("variant")
  out = os.path.join(workdir, experiment)
  if backend != "local":
    from sweeps import backends

    submit = backends.get(backend, backend_options or {})  # fails before anything is written
  with ResultsDB(results_path(workdir)) as db:
    done = {(r["method"], r["seed"]) for r in db.runs(experiment, status="done")
            if r["config_hash"] == digest}
    todo = [s for s in specs if (s.method, s.seed) not in done]
    with Progress(len(specs), desc=f"{experiment}/{variant}", done=len(specs) - len(todo),
                  stream=stream) as sweep:
      started = {}
      for spec in todo:
        run_id, before = db.start_run(experiment, variant, spec.method, cfg, spec.seed)
        if before != "done":  # else finished by a concurrent launcher meanwhile
          started[spec] = run_id
      if backend == "local":
        for spec, run_id in started.items():
          _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep)
      else:
        for spec, outcome in submit(execute_run, cfg, list(started), workdir):
          _record(db, started[spec], spec, outcome, sweep)
    os.makedirs(out, exist_ok=True)
    doc = runner.report(config, db, out, digest)
  for cl in doc["claims"]:
    reference = (f"{cl['baseline']} {_fmt(cl['baseline_value'])} (margin {cl['margin']})"
                 if "baseline" in cl else f"threshold {cl['threshold']}")
    print(f"claim {cl['id']} {'holds' if cl['holds'] else 'DOES NOT HOLD'}: {cl['method']} "
          f"{_fmt(cl['value'])} vs {reference} -> {os.path.join(out, 'claims.json')}", file=stream)
  return doc


def _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep) -> None:
  def log_metrics(step, sim_time, values):
    db.log_metrics(run_id, step, sim_time, values)

  with sweep.run(f"{spec.method} seed {spec.seed}", runner.rounds(config, spec)) as prog:
    try:
      runner.execute(config, spec, ctx, run_dir(workdir, config.experiment, digest, spec),
                     log_metrics, prog)
    except BaseException as e:
      db.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
      raise
  db.finish_run(run_id, "done")


def _record(db, run_id: int, spec: RunSpec, outcome, sweep) -> None:
  """Write a remote run's rows (or its failure) as the driver receives it."""
  with sweep.run(f"{spec.method} seed {spec.seed}", 1) as prog:
    if isinstance(outcome, BaseException):
      db.finish_run(run_id, "failed", error=f"{type(outcome).__name__}: {outcome}")
      prog.log(f"failed: {type(outcome).__name__}: {outcome}")
      raise outcome
    db.log_metrics_many(run_id, outcome)
    db.finish_run(run_id, "done")
    prog.update(1)


def _fmt(v) -> str:
  return "null" if v is None else f"{v:.4g}"
