"""Multi-host JAX: :func:`maybe_initialize_distributed`, called first by every process of a run.

See :mod:`sweeps.backends` ("Multi-host JAX") for how the processes find each other.
"""

from __future__ import annotations

import os

from jaxfl.errors import ConfigError


def _env_int(var: str) -> int:
  value = os.environ[var]
  try:
    return int(value)
  except ValueError:
    raise ConfigError(var, "an integer", value) from None


def _cluster_processes() -> int | None:
  """Processes of a Slurm step or Open MPI job, as JAX would detect them; None outside one."""
  env = os.environ
  # The variables JAX's SlurmCluster requires: set inside an `srun` step, not in a bare
  # sbatch script (whose SLURM_NTASKS alone does not start any other process).
  if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                            "SLURM_PROCID", "SLURM_LOCALID")):
    return _env_int("SLURM_NTASKS")
  if "OMPI_MCA_orte_hnp_uri" in env and "OMPI_COMM_WORLD_SIZE" in env:
    return _env_int("OMPI_COMM_WORLD_SIZE")
  return None


def maybe_initialize_distributed() -> bool:
  """Joins a multi-process JAX run when the environment describes one; else does nothing.

  Call it first in each process, before any JAX computation. It calls
  ``jax.distributed.initialize()`` when

  * ``JAX_COORDINATOR_ADDRESS`` is set (process 0's ``host:port``) with
    ``JAX_NUM_PROCESSES`` > 1 and ``JAX_PROCESS_ID`` (these two are this project's
    convention; JAX itself reads only the address), or with a Slurm step / Open MPI job
    supplying them;
  * or the process is one of several tasks of an ``srun`` step (``SLURM_NTASKS`` > 1)
    or an ``mpirun`` job (``OMPI_COMM_WORLD_SIZE`` > 1), which JAX detects by itself.

  Returns:
    True when this process is part of a multi-process run (initialized now or before),
    False on a single host, where nothing is done.

  Raises:
    ConfigError: naming the environment variable that is missing or malformed.
  """
  import jax

  if jax.distributed.is_initialized():
    return True
  env = os.environ
  # Collectives between the CPU devices of different processes need an implementation
  # (the default has none); accelerators use their own (NCCL), so this is harmless there.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  detected = _cluster_processes()
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
      kwargs["num_processes"] = _env_int("JAX_NUM_PROCESSES")
    if env.get("JAX_PROCESS_ID"):
      kwargs["process_id"] = _env_int("JAX_PROCESS_ID")
    count = kwargs.get("num_processes", detected)
    if count is None:
      raise ConfigError("JAX_NUM_PROCESSES", "the number of processes of the run, set beside "
                        "JAX_COORDINATOR_ADDRESS (or launch with srun or mpirun)")
    if count <= 1:
      return False
    if "process_id" not in kwargs and detected is None:
      raise ConfigError("JAX_PROCESS_ID", "this process's index in [0, JAX_NUM_PROCESSES), "
                        "set beside JAX_COORDINATOR_ADDRESS")
    jax.distributed.initialize(**kwargs)
    return True
  if detected is not None and detected > 1:
    jax.distributed.initialize()
    return True
  return False
