"""The local backend's computation for :func:`sweeps.sweep.run_sweep`: an experiment's
families as vmapped calls, stage by stage, or its runs one by one in this process; each
run marked ``running`` when its computation starts and ``done``, ``failed`` or
``interrupted`` when it ends.

Interrupts: once a stop is requested (Ctrl-C under :func:`jaxfl.progress.stop_on_signals`,
which the launcher opens), the call in progress ends at its next progress tick, or a host
loop before its next round. Its runs are marked ``interrupted`` and
:class:`jaxfl.progress.Interrupted` is raised; runs recorded before stay ``done``, runs not
started stay ``pending``, and every checkpoint written is kept, so relaunching the same
command resumes. A ``KeyboardInterrupt`` (a stop outside that block) marks its runs
``interrupted`` as well.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from jaxfl import progress as jaxfl_progress
from sweeps import families as families_lib
from sweeps import provenance

if TYPE_CHECKING:
  from sweeps.sweep import RunSpec

Interrupted = jaxfl_progress.Interrupted

#: Seconds between two progress lines of one family call (its last row always shows).
ROW_LINES_EVERY_S = 2.0


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


def check_stop(where: str) -> None:
  """Raise :class:`Interrupted` if a stop was requested (before starting ``where``)."""
  if jaxfl_progress.stop_requested():
    raise Interrupted(f"stopped before {where}", jaxfl_progress.first_signal())


def _ended(e: BaseException) -> str:
  """The status of runs whose computation raised ``e``."""
  return "interrupted" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "failed"


def _run_here(runner, config, spec, ctx, workdir, digest, db, run_id, sweep) -> list:
  """Execute one run in this process; returns ``[error]`` if it failed, else ``[]``."""
  check_stop(f"{spec.method} seed {spec.seed}")
  if db is None:  # a non-zero process of a multi-host run: compute, log nothing
    execute(runner, config, spec, ctx, run_dir(workdir, config.experiment, digest, spec),
            lambda *a: None, _Quiet(echo=False))
    return []

  def log_metrics(step, sim_time, values):
    db.log_metrics(run_id, step, sim_time, values)

  db.begin_runs([run_id])
  try:
    total = runner.rounds(config, spec) if hasattr(runner, "rounds") else 1
    with sweep.run(f"{spec.method} seed {spec.seed}", total) as prog, \
        jaxfl_progress.stops_as_interrupted(f"{spec.method} seed {spec.seed}"):
      info = execute(runner, config, spec, ctx,
                     run_dir(workdir, config.experiment, digest, spec), log_metrics, prog)
  except (Interrupted, KeyboardInterrupt) as e:  # stop now; relaunching resumes the run
    db.finish_run(run_id, "interrupted", error=f"{type(e).__name__}: {e}")
    raise
  except Exception as e:  # noqa: BLE001 -- recorded, raised once every run has finished
    db.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
    return [e]
  if info:
    db.set_info(run_id, info)
  db.finish_run(run_id, "done")
  return []


def execute(runner, config, spec: RunSpec, ctx, directory: str, log_metrics, progress):
  """One run in this process: the experiment's ``execute``, or for an experiment of
  families only, the family call that holds the run (its rows logged)."""
  if hasattr(runner, "execute"):
    return provenance.with_environment(
        runner.execute(config, spec, ctx, directory, log_metrics, progress))
  fams = runner.families(config, ctx)
  rows, info = families_lib.execute(fams, config, spec.method, spec.seed, progress.log)
  for step, sim_time, values in rows:
    log_metrics(step, sim_time, values)
  progress.update(1)
  return provenance.run_info(runner, config, ctx, info)


def _run_family(fam, c, started: dict, db, digest: str, sweep, info) -> list:
  """A family's tuning stage, its selection, then its reported stage; each chunk's runs
  recorded as it ends. Returns the failures (diverged reported runs)."""
  todo = {(s.method, s.seed): run_id for s, run_id in started.items()}
  program = families_lib.Program(fam)
  failures: list[BaseException] = []
  tune = families_lib.tuning_runs(fam, c)
  failures += _run_stage(fam, c, program, tune, todo, db, sweep, info)
  report = families_lib.reported_runs(fam, c, _chosen(fam, c, db, digest, sweep))
  failures += _run_stage(fam, c, program, report, todo, db, sweep, info)
  return failures


def _chosen(fam, c, db, digest: str, sweep) -> dict[str, dict[str, float]]:
  """Each method's point, chosen from the family's tuning runs as the database holds them."""
  done = {(r["method"], r["seed"]): r["id"] for r in db.runs(c.experiment, status="done")
          if r["config_hash"] == digest}
  results = {}
  for r in families_lib.tuning_runs(fam, c):
    rows = [(m["step"], m["sim_time"], {m["name"]: m["value"]})
            for m in db.metrics(done[(r.name, r.seed)])]
    results[(r.name, r.seed)] = families_lib.finals(rows)
  chosen = families_lib.choose(fam, c, results)
  if len(fam.grid) > 1:
    sweep.log(f"{fam.name}: chosen on tuning seeds {families_lib.tuning_seeds(c)}: " + "; ".join(
        f"{m} {families_lib.point_name('', p)}" for m, p in chosen.items()))
  return chosen


def _run_stage(fam, c, program, runs, todo: dict, db, sweep, info) -> list:
  """Compute the chunks of ``runs`` that hold unfinished runs; record those runs."""
  from jaxfl.loop import DivergenceError

  failures: list[BaseException] = []
  for chunk in families_lib.chunks(runs, families_lib.batch_size(fam, c)):
    mine = [(i, r) for i, r in enumerate(chunk) if (r.name, r.seed) in todo]
    if not mine:
      continue
    seeds = ",".join(map(str, sorted({r.seed for r in chunk})))
    what = (f"tuning seeds {seeds} x {len(fam.grid)} points" if chunk[0].stage == "tune"
            else f"seeds {seeds}")
    name = f"{fam.name} {what} (one vmapped call)"
    check_stop(name)
    rows = len(fam.steps)  # progress counts the call's logged rows, as jaxfl.progress ticks
    ids = [todo[(r.name, r.seed)] for _, r in mine]
    db.begin_runs(ids)
    try:
      with sweep.run(name, rows, runs=len(mine), unit="row") as prog, \
          jaxfl_progress.stops_as_interrupted(name):
        if not program.compiled:
          prog.log(f"{fam.name}: compiling its program (once for both stages)")
        with jaxfl_progress.reporting(_rows_sink(prog, rows)):
          outputs = program(chunk, families_lib.batch_size(fam, c))
        if prog.round < rows:  # a simulate without ticks
          prog.update(rows)
    except BaseException as e:
      for run_id in ids:
        db.finish_run(run_id, _ended(e), error=f"{type(e).__name__}: {e}")
      raise
    pending = set(ids)
    try:
      for r, outcome in families_lib.outcomes(fam, chunk, outputs, info):
        if (r.name, r.seed) not in todo:
          continue
        check_stop(f"{r.name} seed {r.seed}'s scores")  # a host's post-processing may be long
        run_id = todo[(r.name, r.seed)]
        pending.discard(run_id)
        if isinstance(outcome, DivergenceError):
          db.finish_run(run_id, "failed", error=f"DivergenceError: {outcome}")
          sweep.log(f"failed: {outcome}")
          failures.append(outcome)
          continue
        rows, run_info = outcome
        db.log_metrics_many(run_id, rows)
        if run_info:
          db.set_info(run_id, run_info)
        db.finish_run(run_id, "done")
    except BaseException as e:
      for run_id in pending:
        db.finish_run(run_id, _ended(e), error=f"{type(e).__name__}: {e}")
      raise
  return failures


def _rows_sink(prog, rows: int):
  """A :func:`jaxfl.progress.reporting` sink: ``done`` of ``total`` ticks as rows of the
  run's progress line, at most one line every :data:`ROW_LINES_EVERY_S` (the first tick
  shows: it starts the rate). It never raises: it runs inside XLA's callback."""
  last = [None]

  def sink(done: int, total: int) -> None:
    with contextlib.suppress(Exception):  # a progress line must never fail the computation
      now, row = time.monotonic(), min(rows, max(0, done * rows // total))
      if last[0] is None or now - last[0] >= ROW_LINES_EVERY_S or row == rows:
        last[0] = now
        prog.update(row)

  return sink
