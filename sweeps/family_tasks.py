"""Method families on a remote backend: one task per family call.

Locally a family runs as ``jit(vmap(simulate))`` calls over chunks of its runs
(:mod:`sweeps.families`). On Ray or Slurm each such call is one task: the worker prepares
the experiment, computes the chunk and returns every run of it, so the rows equal the
local path's and no call is computed twice. :func:`sweeps.sweep.run_sweep` sends the
tuning stage's tasks first, records them, chooses each method's point from them, then
sends the reported stage's tasks with the chosen points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from sweeps import families as families_lib
from sweeps import provenance


class Task(NamedTuple):
  """Chunk ``index`` of a family's ``stage`` (``'tune'`` or ``'report'``)."""

  family: str
  stage: str
  index: int
  chosen: dict | None  # the reported stage's {method: point}
  runs: tuple[tuple[str, int], ...]  # its runs' (name, seed)

  @property
  def task_name(self) -> str:
    return f"{self.family}-{self.stage}-{self.index}"


def _stage_runs(fam: families_lib.Family, c, stage: str, chosen) -> list[families_lib.Run]:
  return (families_lib.tuning_runs(fam, c) if stage == "tune"
          else families_lib.reported_runs(fam, c, chosen))


def tasks(fam: families_lib.Family, c, stage: str, todo: Mapping[tuple[str, int], object],
          chosen: dict | None = None) -> list[Task]:
  """The tasks of ``fam``'s ``stage`` whose chunk holds a run in ``todo``."""
  runs = _stage_runs(fam, c, stage, chosen)
  out = []
  for i, chunk in enumerate(families_lib.chunks(runs, families_lib.batch_size(fam, c))):
    names = tuple((r.name, r.seed) for r in chunk)
    if any(n in todo for n in names):
      out.append(Task(fam.name, stage, i, None if chosen is None else dict(chosen), names))
  return out


def execute_task(config_dict: dict, task: Task, workdir: str) -> dict:
  """In a worker: the task's call, as ``{(name, seed): (rows, info) or DivergenceError}``.

  Family runs keep no checkpoints (a call is the unit of work), so ``workdir`` is unused.
  """
  del workdir
  import ml_collections

  from sweeps import experiments

  c = ml_collections.ConfigDict(config_dict)
  runner = experiments.get(c.experiment)
  ctx = runner.prepare(c)
  fam = {f.name: f for f in runner.families(c, ctx)}[task.family]
  batch = families_lib.batch_size(fam, c)
  chunk = families_lib.chunks(_stage_runs(fam, c, task.stage, task.chosen), batch)[task.index]
  outputs = families_lib.Program(fam)(chunk, batch)
  info = provenance.run_info(runner, c, ctx)
  return {(r.name, r.seed): out for r, out in families_lib.outcomes(fam, chunk, outputs, info)}
