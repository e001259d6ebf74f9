"""The ``ray`` backend of :mod:`sweeps.backends`: one run per Ray task.

Checking a Ray address before ``ray.init`` (which keeps retrying on a wrong one), starting
or joining Ray with this checkout's code shipped to the workers, and submitting the runs.
See :mod:`sweeps.backends` for the flags and the contract.

A Ray instance started here keeps its files in a folder of its own (:func:`_temp_dir`),
never in Ray's machine-wide default (``/tmp/ray``): what a sweep leaves there (session
folders, and ``ray_current_cluster``, the address every later ``ray.init()`` on the
machine joins) would outlive the sweep and change what other programs' Ray does.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxfl.errors import ConfigError
from sweeps.backend_base import Submit, _call_run, _outcome, _require

# Long enough for a remote head behind a slow link, short enough to fail fast on a
# typo: a closed port is refused at once, so only unreachable hosts wait this long.
CONNECT_TIMEOUT_S = 3.0
RAY_GCS_PORT = 6379
# Ray puts unix sockets at <temp dir>/session_<date>_<time>_<microseconds>_<pid>/sockets/
# plasma_store, and a socket's path holds at most 107 bytes (103 on macOS): a longer temp
# dir fails inside ray.init, after it has started processes.
_SOCKET_SUFFIX = len("/session_2026-12-07_14-06-03_953665_4194304/sockets/plasma_store")
MAX_TEMP_DIR_LEN = (103 if sys.platform == "darwin" else 107) - _SOCKET_SUFFIX
TEMP_DIR_PREFIX = "jaxfl-ray-"


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


def _resolve_address(address: str, origin: str, temp_dir: str | None = None) -> str:
  """The address to pass to ``ray.init``, once its ``host:port`` accepts TCP connections.

  ``origin`` is what the user gave (the flag's value, or where it came from), for errors;
  ``temp_dir`` is where ``auto`` looks for the address ``ray start --temp-dir`` recorded
  (None: Ray's default folder).
  """
  target = address
  if address == "auto":
    try:  # Ray's own lookup: $RAY_ADDRESS, then the cluster `ray start` last recorded
      from ray._private.services import canonicalize_bootstrap_address

      target = canonicalize_bootstrap_address("auto", temp_dir)
    except Exception as e:  # noqa: BLE001 -- any lookup failure means no cluster found
      where = f"in {temp_dir}" if temp_dir else "here"
      raise _address_error(origin, f"no running Ray cluster found ($RAY_ADDRESS is unset and "
                           f"`ray start` recorded none {where}: {type(e).__name__})") from None
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


def _temp_dir_error(path: str) -> ConfigError | None:
  """Why ``path`` cannot be a Ray instance's temp dir, or None."""
  if len(path) > MAX_TEMP_DIR_LEN:
    return ConfigError("--ray.temp_dir", f"a folder path of at most {MAX_TEMP_DIR_LEN} "
                       f"characters (Ray's unix sockets under it have at most "
                       f"{MAX_TEMP_DIR_LEN + _SOCKET_SUFFIX}; $RAY_TMPDIR, if set, is where "
                       f"the default one is made)", path)
  return None


def _temp_dir(opts: dict) -> tuple[str, bool]:
  """The folder of a Ray instance started here, and whether this made it (and removes it).

  The user's ``--ray.temp_dir`` is used as given and kept (its logs are what one would
  look at). Otherwise a fresh ``jaxfl-ray-*`` folder under ``$RAY_TMPDIR`` (Ray's own
  variable for where its files go) or ``/tmp``: not ``tempfile.gettempdir()``, which on
  macOS is a long path that leaves no room for the socket names (Ray's default is
  ``/tmp/ray`` for the same reason).
  """
  if opts["temp_dir"]:
    return opts["temp_dir"], False
  base = os.environ.get("RAY_TMPDIR") or ("/tmp" if os.path.isdir("/tmp")
                                           else tempfile.gettempdir())
  path = tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX, dir=base)
  if error := _temp_dir_error(path):
    os.rmdir(path)
    raise error
  return path, True


def _remove_temp_dir(path: str, timeout: float = 10.0) -> None:
  """Removes a stopped Ray instance's folder.

  ``ray.shutdown`` returns once it has signalled Ray's processes; a worker still exiting
  may write its last log lines meanwhile, so a removal that races it is retried.
  """
  deadline = time.monotonic() + timeout
  while os.path.lexists(path):
    try:
      shutil.rmtree(path)
    except OSError:
      if time.monotonic() > deadline:
        print(f"warning: could not remove Ray's temp dir {path}", file=sys.stderr)
        return
      time.sleep(0.1)


def _ray_init(ray, address: str, origin: str, opts: dict, temp_dir: str | None) -> None:
  with warnings.catch_warnings(), _without_uv_run_hook():
    # JAX warns on any fork once it has started threads; Ray forks only to exec its own
    # services (subprocess), so no JAX state is used in the child.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    _ray_init_quietly(ray, address, origin, opts, temp_dir)


def _ray_init_quietly(ray, address: str, origin: str, opts: dict, temp_dir: str | None) -> None:
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
      ray.init(address="local", include_dashboard=False, _temp_dir=temp_dir, **common)
    finally:
      notices.removeFilter(_drop_token_notice)
    return
  # No _temp_dir: a driver joining a cluster keeps its files in the temp dir the node
  # was started with (`ray start --temp-dir`); another one would split them.
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
  if opts["temp_dir"] and address not in ("", "auto"):
    # The cluster's nodes keep their files where `ray start --temp-dir` put them; a driver
    # told otherwise would split its session between two folders.
    raise ConfigError("--ray.temp_dir", f"'' when joining the existing cluster at {origin} "
                      "(its nodes chose their temp dir when they were started; it applies "
                      "to a Ray instance started here, or to where --ray.address=auto "
                      "looks)", opts["temp_dir"])
  owned = not ray.is_initialized()  # a connection this process already holds is used as is
  if not sys.stdout.isatty():
    # Workers' printed lines reach the driver with a "(task pid=...)" prefix, in ANSI
    # colours unless this is set: plain text in logs and CI, like the progress lines.
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
  temp_dir, made = None, False

  def stop() -> None:
    """Stops what this backend started: its Ray instance or connection, its temp dir."""
    if owned:
      ray.shutdown()
    if made:
      _remove_temp_dir(temp_dir)
      atexit.unregister(remove_at_exit)

  def remove_at_exit() -> None:
    # Registered before ray.init, so it runs after the ray.shutdown Ray registers there:
    # for a driver that exits without finishing (or starting) its submit generator.
    _remove_temp_dir(temp_dir)

  if owned:
    if address:
      address = _resolve_address(address, origin, opts["temp_dir"] or None)
    else:
      temp_dir, made = _temp_dir(opts)
      if made:
        atexit.register(remove_at_exit)
    try:
      _ray_init(ray, address, origin, opts, temp_dir)
    except BaseException:
      stop()
      raise
  try:
    _check_feasible(ray, opts, started_here=owned and not address)
  except BaseException:
    stop()
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
        name = getattr(spec, "task_name", None) or \
            f"{getattr(spec, 'method', 'run')}-seed{getattr(spec, 'seed', '')}"
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
      stop()

  return submit
