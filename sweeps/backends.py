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
set (see ``_without_uv_run_hook``). Slurm jobs run this interpreter
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
runs still pending are cancelled, and a Ray instance started here is shut down.

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
distributed runtime. ``tests/test_backends.py`` checks two processes on one machine over
loopback: the client mesh spans both processes' devices, a client-axis reduction sums
every client, and a FedAvg sweep launched on both processes writes exactly the rows of
one process holding all their devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import math
import operator
import os
import pickle
import shutil
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import flags

from jaxfl.errors import ConfigError

BACKENDS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local", "debug")
INSTALL = "uv sync --extra cluster"
# Long enough for a remote head behind a slow link, short enough to fail fast on a
# typo: a closed port is refused at once, so only unreachable hosts wait this long.
CONNECT_TIMEOUT_S = 3.0
POLL_S = 1.0  # submitit job polling; Slurm state queries are throttled by submitit itself
RAY_GCS_PORT = 6379

RAY_DEFAULTS: dict[str, Any] = {"address": "", "num_cpus": 1.0, "num_gpus": 0.0}
SLURM_DEFAULTS: dict[str, Any] = {"cluster": "slurm", "folder": "", "partition": "",
                                  "timeout_min": 120, "gpus_per_node": 0,
                                  "cpus_per_task": None, "mem_gb": None}

# submit(fn, config_dict, specs, workdir) -> iterator of (spec, rows or exception)
Submit = Callable[[Callable, dict, Sequence[Any], str], Iterator[tuple[Any, Any]]]


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


def _require(module: str, backend: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError("--backend", f"the {module!r} package installed for --backend={backend} "
                      f"(it is in the 'cluster' extra: {INSTALL})", backend) from None


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


# ---------------------------------------------------------------------------- results


class RemoteError(RuntimeError):
  """A run failed in a worker with an exception that could not travel back as itself."""


@dataclasses.dataclass
class _Failure:
  """A worker's exception in a form that survives pickling.

  Exceptions with their own ``__init__`` signature (``ConfigError(field, expected,
  got)``) do not unpickle through ``BaseException.__reduce__``, which replays ``args``
  into ``__init__``. This keeps the class, ``args`` and attributes and rebuilds the
  instance without calling ``__init__``.
  """

  cls: type | None
  args: tuple
  state: dict
  summary: str
  traceback: str

  @classmethod
  def capture(cls, e: BaseException) -> _Failure:
    summary = f"{type(e).__qualname__}: {e}"
    tb = "".join(traceback.format_exception(e))
    failure = cls(type(e), tuple(e.args), dict(getattr(e, "__dict__", {})), summary, tb)
    try:  # the driver unpickles it with the same code, so a round trip here is the test
      pickle.loads(pickle.dumps(failure)).rebuild()
    except Exception:  # noqa: BLE001 -- any failure means: send the text instead
      failure = cls(None, (), {}, summary, tb)
    return failure

  def rebuild(self) -> BaseException:
    if self.cls is None:
      return RemoteError(self.summary)
    e = self.cls.__new__(self.cls, *self.args)
    e.args = self.args
    e.__dict__.update(self.state)
    return e


def _call_run(fn: Callable, config_dict: dict, spec: Any, workdir: str) -> tuple:
  """The worker's entry point: ``("ok", rows)`` or ``("error", _Failure)``.

  Returning the failure as a value (rather than raising) keeps the exception's class
  and fields, which Ray's and submitit's own error wrappers reduce to text.
  """
  try:
    return "ok", fn(config_dict, spec, workdir)
  except Exception as e:  # noqa: BLE001 -- every run failure is reported to the driver
    return "error", _Failure.capture(e)


def _outcome(result: Any, where: str) -> Any:
  """The driver's view of ``_call_run``'s value: the rows, or the rebuilt exception."""
  status, value = result
  if status == "ok":
    return value
  e = value.rebuild()
  e.add_note(f"raised in {where}; the worker's traceback:\n{value.traceback.rstrip()}")
  return e


def _submit_here(fn: Callable, config_dict: dict, specs: Sequence[Any],
                 workdir: str) -> Iterator[tuple[Any, Any]]:
  """The ``local`` backend behind the same interface: runs in this process, in order."""
  for spec in specs:
    try:
      outcome = fn(config_dict, spec, workdir)
    except Exception as e:  # noqa: BLE001 -- reported like a remote failure
      outcome = e
    yield spec, outcome


# ---------------------------------------------------------------------------- Ray


def _code_dirs() -> list[str]:
  """This checkout's packages, shipped to Ray workers so they run the driver's code."""
  import jaxfl
  import sweeps

  return [os.path.dirname(os.path.abspath(m.__file__)) for m in (jaxfl, sweeps)]


def _split_address(address: str) -> tuple[str, int]:
  """``host:port`` of a Ray address (``[v6]:port``, ``ray://host:port``); ValueError if none."""
  rest = address.removeprefix("ray://").rstrip("/")
  host, sep, port = rest.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(address)
  return host, int(port)


def _address_error(address: str, why: str) -> ConfigError:
  return ConfigError(
      "--ray.address", f"a reachable Ray cluster address (the head's host:port, e.g. "
      f"10.0.0.1:{RAY_GCS_PORT}; ray://host:port; auto; or '' to start Ray on this machine): "
      f"{why}", address)


def _resolve_address(address: str, origin: str) -> str:
  """The address to pass to ``ray.init``, once its ``host:port`` accepts TCP connections.

  ``origin`` is what the user gave (the flag's value, or where it came from), for errors.
  """
  target = address
  if address == "auto":
    try:  # Ray's own lookup: $RAY_ADDRESS, then the cluster `ray start` last recorded
      from ray._private.services import canonicalize_bootstrap_address

      target = canonicalize_bootstrap_address("auto")
    except Exception as e:  # noqa: BLE001 -- any lookup failure means no cluster found
      raise _address_error(origin, f"no running Ray cluster found ($RAY_ADDRESS is unset and "
                           f"`ray start` recorded none here: {type(e).__name__})") from None
  try:
    host, port = _split_address(target)
  except ValueError:
    raise _address_error(origin, f"{target!r} is not host:port") from None
  try:
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
      grpc = _speaks_grpc(conn)
  except OSError as e:
    why = (f"no answer within {CONNECT_TIMEOUT_S:g} s" if isinstance(e, TimeoutError)
           else e.strerror or _first_line(e))
    raise _address_error(origin, f"connecting to {host}:{port} failed ({why})") from None
  if grpc is False:
    raise _address_error(origin, f"{host}:{port} accepts connections but does not answer "
                         "as a Ray head (gRPC over HTTP/2)") from None
  return target


# An HTTP/2 client's opening: the connection preface, then an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_H2_SETTINGS = 4


def _speaks_grpc(conn: socket.socket) -> bool | None:
  """Whether the server on ``conn`` speaks HTTP/2, as Ray's GCS and Ray Client (gRPC) do.

  An HTTP/2 server's first frame is its SETTINGS frame, sent at once: this tells a
  Ray head from any other open port in milliseconds, where ``ray.init`` would keep
  retrying for minutes. None (not checked) when Ray uses TLS, whose handshake comes
  first.
  """
  if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
    return None
  try:
    conn.sendall(_H2_PREFACE)
    header = b""
    while len(header) < 9:
      chunk = conn.recv(9 - len(header))
      if not chunk:
        break
      header += chunk
  except OSError:  # reset or timed out: not an HTTP/2 server
    return False
  return len(header) == 9 and header[3] == _H2_SETTINGS


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def _drop_token_notice(record: logging.LogRecord) -> bool:
  return not record.getMessage().startswith("Token authentication is enabled")


UV_HOOK = "RAY_ENABLE_UV_RUN_RUNTIME_ENV"


@contextlib.contextmanager
def _without_uv_run_hook() -> Iterator[None]:
  """Turns off Ray's replication of a ``uv run`` driver's environment, unless the user set it.

  When the driver runs under ``uv run`` (as ``uv run python -m sweeps.launch`` and
  ``uv run pytest`` do), Ray by default makes every worker re-run ``uv run`` in an
  uploaded copy of the current directory, which builds a fresh virtualenv per node:
  over a minute here, before the first run starts, on a machine whose workers could
  use this very interpreter. The backend's contract is instead: ship ``jaxfl`` and
  ``sweeps``, find third-party packages installed. Ray reads the switch from
  ``ray_constants`` when ``ray.init`` runs, so it is flipped only for that call;
  ``RAY_ENABLE_UV_RUN_RUNTIME_ENV=1`` in the environment restores Ray's behaviour.
  """
  try:
    constants = importlib.import_module("ray._private.ray_constants")
  except ImportError:
    constants = None
  if UV_HOOK in os.environ or not hasattr(constants, UV_HOOK):
    yield
    return
  before = getattr(constants, UV_HOOK)
  setattr(constants, UV_HOOK, False)
  try:
    yield
  finally:
    setattr(constants, UV_HOOK, before)


def _worker_env(opts: dict) -> dict[str, str]:
  """Environment variables for every worker of the sweep's Ray job.

  * Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` alone for a task that requests no GPU, so
    a CPU run on a GPU node would see (and JAX would claim) every GPU; Ray's switch
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`` restores hiding them.
  * Runs sharing a GPU (``num_gpus`` < 1) each get that share of its memory, since
    JAX preallocates 75% of a GPU per process by default. A value the user set for
    either JAX variable wins.
  """
  env = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO":
         os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")}
  share = opts["num_gpus"]
  jax_vars = ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
              "XLA_PYTHON_CLIENT_ALLOCATOR")
  if 0 < share < 1 and not any(v in os.environ for v in jax_vars):
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.75 * share:.4f}"
  return env


def _ray_init(ray, address: str, origin: str, opts: dict) -> None:
  with warnings.catch_warnings(), _without_uv_run_hook():
    # JAX warns on any fork once it has started threads; Ray forks only to exec its own
    # services (subprocess), so no JAX state is used in the child.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    _ray_init_quietly(ray, address, origin, opts)


def _ray_init_quietly(ray, address: str, origin: str, opts: dict) -> None:
  runtime_env = {"py_modules": _code_dirs(), "excludes": ["__pycache__", "*.pyc"],
                 "env_vars": _worker_env(opts)}
  common = {"runtime_env": runtime_env, "logging_level": logging.WARNING}
  if not address:
    # Ray's default for a new instance (token authentication, its services listen on
    # every interface) stays; only its notice about that default, logged on every
    # launch, is dropped. "local" always starts a new instance rather than joining a
    # cluster that a past `ray start` left running on this machine.
    notices = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notices.addFilter(_drop_token_notice)
    try:
      ray.init(address="local", include_dashboard=False, **common)
    finally:
      notices.removeFilter(_drop_token_notice)
    return
  try:
    ray.init(address=address, **common)
  except Exception as e:  # noqa: BLE001 -- anything here means: not a usable cluster
    raise _address_error(origin, f"ray.init failed ({_first_line(e)})") from None


def _check_feasible(ray, opts: dict, *, started_here: bool) -> None:
  """Some alive node must hold one run's CPUs and GPUs, or its tasks wait forever."""
  try:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive", True)]
  except Exception:  # noqa: BLE001 -- e.g. Ray Client without node listing: skip the check
    return
  need = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"]}
  if not nodes or any(all(r.get(k, 0) >= v for k, v in need.items()) for r in nodes):
    return
  most = {k: max(r.get(k, 0) for r in nodes) for k in need}
  key = "GPU" if most["GPU"] < need["GPU"] else "CPU"
  field = f"--ray.num_{key.lower()}s"
  expected = (f"at most {most[key]:g} {key}s per run (the most that one node of the Ray "
              f"{'instance started here' if started_here else 'cluster'} has)")
  if started_here:
    raise ConfigError(field, expected, need[key])
  print(f"warning: {field}={need[key]:g}: no node of the Ray cluster has that many {key}s now; "
        "runs wait until the autoscaler adds one", file=sys.stderr)


def _ray_backend(opts: dict) -> Submit:
  ray = _require("ray", "ray")
  origin = opts["address"]
  address = origin or os.environ.get("RAY_ADDRESS", "").strip()
  if address and not origin:
    origin = f"{address} (from $RAY_ADDRESS)"
  owned = not ray.is_initialized()  # a connection this process already holds is used as is
  if not sys.stdout.isatty():
    # Workers' printed lines reach the driver with a "(task pid=...)" prefix, in ANSI
    # colours unless this is set: plain text in logs and CI, like the progress lines.
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
  if owned:
    if address:
      address = _resolve_address(address, origin)
    _ray_init(ray, address, origin, opts)
  try:
    _check_feasible(ray, opts, started_here=owned and not address)
  except BaseException:
    if owned:
      ray.shutdown()
    raise
  state = {"used": False}

  def submit(fn: Callable, config_dict: dict, specs: Sequence[Any],
             workdir: str) -> Iterator[tuple[Any, Any]]:
    if state["used"]:
      raise RuntimeError("a Ray backend's submit runs once (get() another for the next sweep)")
    state["used"] = True
    workdir = os.path.abspath(workdir)
    pending: dict[Any, Any] = {}
    try:
      # No retries: rows come back only at the end of a run, so a retry that resumed
      # from the run's checkpoint would return only the rows after it.
      task = ray.remote(_call_run)
      config_ref = ray.put(config_dict)
      for spec in specs:
        name = f"{getattr(spec, 'method', 'run')}-seed{getattr(spec, 'seed', '')}"
        ref = task.options(num_cpus=opts["num_cpus"], num_gpus=opts["num_gpus"], max_retries=0,
                           name=name).remote(fn, config_ref, spec, workdir)
        pending[ref] = spec
      while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
          spec = pending.pop(ref)
          try:
            outcome = _outcome(ray.get(ref), f"Ray task {ref.task_id().hex()}")
          except Exception as e:  # noqa: BLE001 -- the worker died or the task never ran
            outcome = e
          yield spec, outcome
    finally:
      for ref in pending:
        with contextlib.suppress(Exception):  # finished meanwhile, or already gone
          ray.cancel(ref)
      if owned:
        ray.shutdown()

  return submit


# ---------------------------------------------------------------------------- Slurm


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


# ---------------------------------------------------------------------------- multi-host


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
