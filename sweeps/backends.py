"""Remote sweep backends: one run per Ray task, or one run per Slurm job through submitit.

:func:`sweeps.sweep.run_sweep` with ``backend="ray"`` or ``"slurm"`` calls
``submit = get(backend, options)`` before it writes anything, then::

  for spec, outcome in submit(execute_run, config_dict, specs, workdir):
    ...  # outcome: the run's metric rows, or the exception it ended with

Each run executes ``execute_run(config_dict, spec, workdir)`` in a worker; results come
back in order of completion, and only the driver writes the results database (SQLite's
WAL needs every writer on the file's host).

Backends and their flags (``sweeps.launch --backend=...``; ``options_from_flags`` turns
them into the ``options`` dict, whose keys are the flag names without the prefix):

``local``
  Runs in the launcher's process (``sweeps.sweep``); no options.

``ray``
  ``--ray.address``: ``""`` (default) connects to ``$RAY_ADDRESS`` when it is set (as
  inside ``ray job submit``), otherwise starts a Ray instance on this machine for the
  sweep and stops it afterwards; ``host:port`` connects to an existing cluster's head
  node (the GCS address ``ray start --head`` prints, port 6379 by default);
  ``ray://host:port`` uses Ray Client (port 10001); ``auto`` finds the cluster that
  ``ray start`` last started on this machine.
  ``--ray.num_cpus`` (1) and ``--ray.num_gpus`` (0): what each run's task requests, e.g.
  ``--ray.num_gpus=1`` for one GPU per run. Ray sets ``CUDA_VISIBLE_DEVICES`` so a run
  sees only its own GPUs; with 0 it sees none and JAX runs on the CPU; with a fraction
  (0.5: two runs per GPU) JAX's memory preallocation is scaled to the share.
  ``--ray.temp_dir``: where a Ray instance started here keeps its sessions, sockets and
  logs. By default a fresh ``jaxfl-ray-*`` folder under ``$RAY_TMPDIR`` or ``/tmp``,
  removed when the instance stops; a folder given here is kept (for its logs). Never
  Ray's machine-wide ``/tmp/ray``, whose ``ray_current_cluster`` file every later
  ``ray.init()`` on the machine would read. At most ``backend_ray.MAX_TEMP_DIR_LEN``
  characters (Ray's unix socket paths are short). With ``auto`` it is the folder where
  ``ray start --temp-dir`` recorded the cluster's address; with any other address it must
  stay empty (a cluster's nodes chose their folder when they started).

``slurm``
  ``--slurm.cluster``: ``slurm`` (default; needs ``sbatch`` on ``PATH``), or submitit's
  executors that need no Slurm: ``local`` (one subprocess per run on this machine) and
  ``debug`` (runs one after another in this process, for a debugger).
  ``--slurm.folder``: submitit's job files and logs, ``<workdir>/slurm`` by default (one
  sub-folder per job id). ``--slurm.partition`` (cluster default), ``--slurm.timeout_min``
  (120), ``--slurm.gpus_per_node`` (0), ``--slurm.cpus_per_task`` and ``--slurm.mem_gb``
  (cluster defaults) go to ``sbatch``. Each run is one task on one node; all runs are
  submitted at once as a job array.

Validation: :func:`get` rejects bad options before anything is written, with a
:class:`~jaxfl.errors.ConfigError` whose field is the flag (the launcher prints it as
one line and exits 2): an unknown backend, a missing ``ray``/``submitit`` package (the
``cluster`` extra: ``uv sync --extra cluster``), a negative or malformed resource
request, ``--slurm.cluster=slurm`` without Slurm, and an unreachable Ray address.
``ray.init`` on a wrong address keeps retrying for minutes, so the address is checked
first, with a ``CONNECT_TIMEOUT_S`` timeout: a TCP connection to the head's
``host:port`` (a closed port is refused at once, an unreachable host times out), then
the opening of an HTTP/2 connection, which a Ray head (gRPC) answers at once with its
SETTINGS frame and any other server does not (skipped when ``RAY_USE_TLS`` is set).
Errors that ``ray.init`` still raises (e.g. a missing auth token) are reported under
the same flag. After connecting, a request that no node can satisfy
(``--ray.num_gpus=1`` on a machine without GPUs) is an error on a Ray instance started
here, and a warning on an existing cluster (its autoscaler may still add such nodes).
``ray://`` addresses need Ray Client (``pip install 'ray[client]'``), which the extra
does not include.

Code and files on workers: the Ray job ships this checkout's ``jaxfl`` and ``sweeps``
packages to the workers (``runtime_env`` ``py_modules``, a few hundred KB), so workers
run exactly the driver's code; third-party packages (JAX, ...) must be installed on the
nodes. Ray's own replication of a ``uv run`` driver's environment, which rebuilds the
virtualenv on every node, is turned off unless ``RAY_ENABLE_UV_RUN_RUNTIME_ENV`` is
set (see ``backend_ray._without_uv_run_hook``). Slurm jobs run this interpreter
(``sys.executable``) and import from this checkout, so the nodes must share its
filesystem. Either way the workdir is passed as
an absolute path and must be on a filesystem the workers share: runs keep their
checkpoints there.

Failures: a run that raises comes back as the same exception (its class and fields
survive the trip; the worker's traceback is attached as a note). A worker that dies
(out of memory, killed, a Slurm time limit) comes back as Ray's or submitit's error.
Ray tasks are not retried (``max_retries=0``): a run's rows travel back only when it
ends, so a retry resumed from the run's checkpoint would return only the rows after
that checkpoint. When the driver stops consuming results early (an error, Ctrl-C), the
runs still pending are cancelled, and a Ray instance started here is shut down and its
temp dir removed.

Multi-host JAX (one run over several hosts): every process of the run executes the same
launch command, and the launcher calls :func:`maybe_initialize_distributed` -- that is,
``jax.distributed.initialize()`` -- before anything else touches JAX. Afterwards
``jax.devices()`` lists the devices of every process, so with ``num_devices=0``
:func:`jaxfl.runtime.client_mesh` builds the ``'devices'`` mesh over the global device
set, :class:`jaxfl.runtime.ClientAxis` shards the client axis over all hosts, and the
collectives over ``ClientAxis.axis_name`` (the aggregation's ``all_gather``) run across
hosts (NCCL between GPUs, Gloo between CPUs). Every process loads the same data and
passes the same host-local arrays, which a multi-process ``jit`` takes as replicated
values and shards over the mesh; a process that should hold only its own clients can
pass a global array instead
(``jax.make_array_from_process_local_data(NamedSharding(mesh, P('devices')), block)``).
Process 0 alone reads and writes the results database and the reports
(:func:`sweeps.sweep.run_sweep` broadcasts the list of runs left to the others). The
processes find each other through the environment: ``JAX_COORDINATOR_ADDRESS`` (process
0's ``host:port``) with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; or ``srun`` with
several tasks (JAX reads ``SLURM_NTASKS``, ``SLURM_PROCID``, ..., and gives each task
one GPU, ``SLURM_LOCALID``); or Open MPI's ``mpirun``. On one host none of these is set
and the helper does nothing. The ray and slurm backends run each run as one process on
one host (using that host's devices through ``num_devices``) and never initialize the
distributed runtime. ``tests/sweeps/test_backends.py`` checks two processes on one machine over
loopback: the client mesh spans both processes' devices, a client-axis reduction sums
every client, and a FedAvg sweep launched on both processes writes exactly the rows of
one process holding all their devices.

Modules: this one holds the flags, :func:`get` and the option checks;
:mod:`sweeps.backend_base` the worker's side and the ``local`` backend,
:mod:`sweeps.backend_ray`, :mod:`sweeps.backend_slurm` and :mod:`sweeps.multihost` the rest.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any

from absl import flags

from jaxfl.errors import ConfigError
from sweeps.backend_base import INSTALL, RemoteError, Submit, _submit_here
from sweeps.backend_base import _call_run as _call_run
from sweeps.backend_base import _outcome as _outcome
from sweeps.backend_ray import CONNECT_TIMEOUT_S, RAY_GCS_PORT, _ray_backend, _temp_dir_error
from sweeps.backend_ray import _resolve_address as _resolve_address
from sweeps.backend_ray import _speaks_grpc as _speaks_grpc
from sweeps.backend_ray import _worker_env as _worker_env
from sweeps.backend_slurm import POLL_S, _slurm_backend
from sweeps.multihost import maybe_initialize_distributed

__all__ = ["BACKENDS", "CONNECT_TIMEOUT_S", "INSTALL", "POLL_S", "RAY_DEFAULTS", "RAY_GCS_PORT",
           "SLURM_CLUSTERS", "SLURM_DEFAULTS", "RemoteError", "Submit", "define_flags", "get",
           "maybe_initialize_distributed", "options_from_flags"]
# The internals imported "as" themselves are re-exported for tests/sweeps/test_backends.py.

BACKENDS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local", "debug")
RAY_DEFAULTS: dict[str, Any] = {"address": "", "num_cpus": 1.0, "num_gpus": 0.0,
                                "temp_dir": ""}
SLURM_DEFAULTS: dict[str, Any] = {"cluster": "slurm", "folder": "", "partition": "",
                                  "timeout_min": 120, "gpus_per_node": 0,
                                  "cpus_per_task": None, "mem_gb": None}


# ---------------------------------------------------------------------------- flags


def define_flags(fv: flags.FlagValues) -> None:
  """Defines the ``--ray.*`` and ``--slurm.*`` flags on ``fv``."""
  flags.DEFINE_string(
      "ray.address", RAY_DEFAULTS["address"],
      "Ray cluster to run on: '' = $RAY_ADDRESS if set, else a Ray instance started on this "
      "machine for the sweep; host:port = an existing cluster's head (GCS, port 6379 by "
      "default); ray://host:port = Ray Client; auto = the cluster `ray start` last started here",
      flag_values=fv)
  flags.DEFINE_float("ray.num_cpus", RAY_DEFAULTS["num_cpus"],
                     "CPUs each run's Ray task requests", flag_values=fv)
  flags.DEFINE_float("ray.num_gpus", RAY_DEFAULTS["num_gpus"],
                     "GPUs each run's Ray task requests (e.g. 1: one GPU per run; 0: CPU only)",
                     flag_values=fv)
  flags.DEFINE_string(
      "ray.temp_dir", RAY_DEFAULTS["temp_dir"],
      "folder of a Ray instance started here ('' = a fresh jaxfl-ray-* folder under "
      "$RAY_TMPDIR or /tmp, removed afterwards; never Ray's shared /tmp/ray); with "
      "--ray.address=auto, where `ray start --temp-dir` recorded the cluster", flag_values=fv)
  flags.DEFINE_string(
      "slurm.cluster", SLURM_DEFAULTS["cluster"],
      f"submitit executor, one of {list(SLURM_CLUSTERS)}: slurm (needs sbatch), local (a "
      "subprocess per run on this machine), debug (in this process, one run after another)",
      flag_values=fv)
  flags.DEFINE_string("slurm.folder", SLURM_DEFAULTS["folder"],
                      "submitit job files and logs ('' = <workdir>/slurm)", flag_values=fv)
  flags.DEFINE_string("slurm.partition", SLURM_DEFAULTS["partition"],
                      "Slurm partition ('' = the cluster's default)", flag_values=fv)
  flags.DEFINE_integer("slurm.timeout_min", SLURM_DEFAULTS["timeout_min"],
                       "time limit of each run's job, in minutes", flag_values=fv)
  flags.DEFINE_integer("slurm.gpus_per_node", SLURM_DEFAULTS["gpus_per_node"],
                       "GPUs of each run's job", flag_values=fv)
  flags.DEFINE_integer("slurm.cpus_per_task", SLURM_DEFAULTS["cpus_per_task"],
                       "CPUs of each run's job (unset = the cluster's default)", flag_values=fv)
  flags.DEFINE_float("slurm.mem_gb", SLURM_DEFAULTS["mem_gb"],
                     "memory of each run's job in GB (unset = the cluster's default)",
                     flag_values=fv)


def options_from_flags(fv: flags.FlagValues, backend: str) -> dict:
  """The chosen backend's options from parsed flags: ``{"num_gpus": 1.0, ...}``."""
  if backend == "local":
    return {}
  if backend == "ray":
    return {key: fv[f"ray.{key}"].value for key in RAY_DEFAULTS}
  if backend == "slurm":
    return {key: fv[f"slurm.{key}"].value for key in SLURM_DEFAULTS}
  raise ConfigError("--backend", f"one of {list(BACKENDS)}", backend)


# ---------------------------------------------------------------------------- get


def get(name: str, options: dict | None = None) -> Submit:
  """The ``submit`` function of a backend, after checking everything checkable.

  Args:
    name: one of :data:`BACKENDS`.
    options: the backend's options (see :func:`options_from_flags`); missing keys take
      the flags' defaults.

  Returns:
    ``submit(fn, config_dict, specs, workdir)``, a generator of ``(spec, outcome)`` in
    order of completion, where ``outcome`` is ``fn(config_dict, spec, workdir)``'s return
    value or the exception the run ended with. For ``ray``, a Ray instance started by
    ``get`` is shut down when the generator finishes or is closed; call ``submit`` once.

  Raises:
    ConfigError: naming the flag, for anything that would fail later (see the module
      docstring); nothing has been written then.
  """
  if name not in BACKENDS:
    raise ConfigError("--backend", f"one of {list(BACKENDS)}", name)
  options = dict(options or {})
  if name == "local":
    _check_keys("local", options, {})
    return _submit_here
  if name == "ray":
    return _ray_backend(_ray_options(options))
  return _slurm_backend(_slurm_options(options))


def _check_keys(prefix: str, options: dict, defaults: dict) -> dict:
  for key, value in options.items():
    if key not in defaults:
      raise ConfigError(f"--{prefix}.{key}",
                        f"an option of the {prefix} backend (one of {sorted(defaults)})", value)
  return {**defaults, **options}


def _number(field: str, value: Any, *, integer: bool = False, minimum: float = 0,
            optional: bool = False) -> Any:
  """A finite number >= ``minimum`` (an int if ``integer``), or None when ``optional``."""
  if value is None and optional:
    return None
  what = "an integer" if integer else "a number"
  expected = f"{what} >= {minimum}" + (" or unset" if optional else "")
  if isinstance(value, bool):
    raise ConfigError(field, expected, value)
  try:
    x = operator.index(value) if integer else float(value)
  except (TypeError, ValueError):
    raise ConfigError(field, expected, value) from None
  if not (math.isfinite(x) and x >= minimum):
    raise ConfigError(field, expected, value)
  return x


def _ray_resource(field: str, value: Any, *, gpus: bool) -> float:
  x = _number(field, value)
  # Ray's own rules: quantities in steps of 1e-4, and GPUs shared only as fractions of one.
  if abs(x * 1e4 - round(x * 1e4)) > 1e-6:
    raise ConfigError(field, "a quantity in steps of 0.0001", value)
  if gpus and x > 1 and not x.is_integer():
    raise ConfigError(field, "a whole number of GPUs, or a fraction of one GPU", value)
  return x


def _ray_options(options: dict) -> dict:
  opts = _check_keys("ray", options, RAY_DEFAULTS)
  if not isinstance(opts["address"], str):
    raise ConfigError("--ray.address", "a string (host:port, ray://host:port, auto or '')",
                      opts["address"])
  opts["address"] = opts["address"].strip()
  if not isinstance(opts["temp_dir"], str):
    raise ConfigError("--ray.temp_dir", "a string (a folder path, or '')", opts["temp_dir"])
  if temp_dir := opts["temp_dir"].strip():
    temp_dir = os.path.abspath(os.path.expanduser(temp_dir))  # Ray wants it absolute
    if os.path.exists(temp_dir) and not os.path.isdir(temp_dir):
      raise ConfigError("--ray.temp_dir", "a folder (or a path to create one at)", temp_dir)
    if error := _temp_dir_error(temp_dir):
      raise error
  opts["temp_dir"] = temp_dir
  opts["num_cpus"] = _ray_resource("--ray.num_cpus", opts["num_cpus"], gpus=False)
  opts["num_gpus"] = _ray_resource("--ray.num_gpus", opts["num_gpus"], gpus=True)
  return opts


def _slurm_options(options: dict) -> dict:
  opts = _check_keys("slurm", options, SLURM_DEFAULTS)
  if opts["cluster"] not in SLURM_CLUSTERS:
    raise ConfigError("--slurm.cluster", f"one of {list(SLURM_CLUSTERS)}", opts["cluster"])
  for key in ("folder", "partition"):
    if not isinstance(opts[key], str):
      raise ConfigError(f"--slurm.{key}", "a string", opts[key])
  opts["timeout_min"] = _number("--slurm.timeout_min", opts["timeout_min"], integer=True,
                                minimum=1)
  opts["gpus_per_node"] = _number("--slurm.gpus_per_node", opts["gpus_per_node"], integer=True)
  opts["cpus_per_task"] = _number("--slurm.cpus_per_task", opts["cpus_per_task"], integer=True,
                                  minimum=1, optional=True)
  mem = _number("--slurm.mem_gb", opts["mem_gb"], optional=True)
  if mem == 0:
    raise ConfigError("--slurm.mem_gb", "a number > 0 or unset", opts["mem_gb"])
  opts["mem_gb"] = mem
  return opts
