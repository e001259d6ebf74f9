"""The ``slurm`` backend of :mod:`sweeps.backends`: one run per Slurm job, through submitit.

See :mod:`sweeps.backends` for the flags and the contract.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxfl.errors import ConfigError
from sweeps.backend_base import Submit, _call_run, _outcome, _require

POLL_S = 1.0  # submitit job polling; Slurm state queries are throttled by submitit itself


def _slurm_backend(opts: dict) -> Submit:
  submitit = _require("submitit", "slurm")
  if opts["cluster"] == "slurm" and shutil.which("sbatch") is None:
    raise ConfigError("--slurm.cluster", "'local' or 'debug' on a machine without Slurm (no "
                      "sbatch on PATH), or 'slurm' on a Slurm login node", "slurm")

  def submit(fn: Callable, config_dict: dict, specs: Sequence[Any],
             workdir: str) -> Iterator[tuple[Any, Any]]:
    specs = list(specs)
    if not specs:
      return
    workdir = os.path.abspath(workdir)
    folder = os.path.abspath(opts["folder"] or os.path.join(workdir, "slurm"))
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "%j"), cluster=opts["cluster"])
    params = {"name": f"jaxfl-{config_dict.get('experiment', 'run')}",
              "timeout_min": opts["timeout_min"], "nodes": 1, "tasks_per_node": 1,
              "gpus_per_node": opts["gpus_per_node"], "cpus_per_task": opts["cpus_per_task"],
              "mem_gb": opts["mem_gb"], "slurm_partition": opts["partition"] or None}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    n = len(specs)
    jobs = executor.map_array(_call_run, [fn] * n, [config_dict] * n, specs, [workdir] * n)
    pending = list(zip(jobs, specs))
    try:
      while pending:
        finished = [(job, spec) for job, spec in pending if job.done()]
        for job, spec in finished:
          pending.remove((job, spec))
          try:
            outcome = _outcome(job.result(), f"{opts['cluster']} job {job.job_id}")
          except Exception as e:  # noqa: BLE001 -- the job died, timed out or was cancelled
            outcome = e
          yield spec, outcome
        if pending and not finished:
          time.sleep(POLL_S)
    finally:
      for job, _ in pending:
        with contextlib.suppress(Exception):  # finished meanwhile, or already gone
          job.cancel(check=False)

  return submit
