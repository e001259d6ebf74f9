"""Remote backends: Ray and submitit run real sweeps with the local backend's exact rows;
bad backend input fails fast with one line; the multi-host helper."""

import importlib.util
import io
import json
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from absl import flags

from jaxfl.errors import ConfigError
from sweeps import backends, experiments, launch
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import RunSpec, execute_run, run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "sweeps/configs/fedavg.py:quick"
# A closed port on loopback: connections are refused at once.
CLOSED = "127.0.0.1:1"


def tiny_config(**overrides):
  """FedAvg quick, shrunk to 2 runs (fedavg and centralized, one seed) of a few seconds."""
  spec = importlib.util.spec_from_file_location(
      "fedavg_config", os.path.join(ROOT, "sweeps", "configs", "fedavg.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("quick")
  c.update(dict(num_seeds=1, num_rounds=4, eval_every=2, checkpoint_every=2, central_epochs=1,
                num_clients=8, clients_per_round=4, **overrides))
  return c


def sweep(workdir, backend="local", options=None):
  config = tiny_config()
  out = io.StringIO()
  # Remote workers execute runs one by one; the local baseline must too (vmapped seeds
  # agree only to float32 rounding).
  run_sweep(experiments.get(config.experiment), config, str(workdir), backend=backend,
            backend_options=options, stream=out, vmap_seeds=False)
  return out.getvalue()


def metric_rows(workdir):
  con = sqlite3.connect(results_path(workdir))
  rows = con.execute("SELECT r.method, r.seed, m.step, m.name, m.sim_time, m.value FROM metrics m "
                     "JOIN runs r ON r.id = m.run_id ORDER BY 1, 2, 3, 4").fetchall()
  runs = con.execute("SELECT method, seed, status FROM runs ORDER BY 1, 2").fetchall()
  con.close()
  return rows, runs


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local")
  sweep(workdir)
  rows, runs = metric_rows(workdir)
  assert runs == [("centralized", 0, "done"), ("fedavg", 0, "done")]
  # centralized: accuracy, loss, client_lr; fedavg: 4 metrics at rounds 2, 4, client_lr at 4
  assert len(rows) == 3 + 2 * 4 + 1
  return rows, runs


def environments(workdir):
  """Each run's ``info["environment"]``: where the sweep says it was computed."""
  with ResultsDB(results_path(workdir)) as db:
    return [(r["info"] or {}).get("environment") for r in db.runs()]


def descendants(names=("raylet", "gcs_server", "ray::", "plasma", "dashboard")):
  """Processes below this one whose command line mentions any of ``names`` (Linux /proc)."""
  parent = {}
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        parent[int(pid), "cmd"] = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError, ValueError):
      continue
  found = []
  for pid in [p for p in parent if isinstance(p, int)]:
    p, chain = pid, set()
    while p in parent and p not in chain and p != os.getpid():
      chain.add(p)
      p = parent[p]
    if p == os.getpid() and pid != os.getpid():
      cmd = parent.get((pid, "cmd"), "")
      if any(n in cmd for n in names):
        found.append(f"{pid} {cmd[:120]}")
  return found


def short_temp_dir():
  """A fresh folder whose path leaves room for Ray's unix sockets (pytest's tmp_path does not)."""
  return tempfile.mkdtemp(prefix="jaxfl-t-", dir="/tmp" if os.path.isdir("/tmp") else None)


@pytest.fixture(autouse=True)
def ray_default_temp(monkeypatch):
  """Ray's machine-wide default folder moved to a fresh one, which must stay empty.

  Ray puts its files under ``$RAY_TMPDIR/ray`` (``/tmp/ray`` when unset), and every later
  ``ray.init()`` on the machine joins the address a ``ray start`` recorded there
  (``ray_current_cluster``), even after that cluster has stopped. Moving the default to a
  folder of this test makes the check see only what this test's Ray left (other programs
  on the machine may use the real ``/tmp/ray`` meanwhile) and keeps the real one clean.
  The backend's own ``jaxfl-ray-*`` folder is made under it too, and must be gone.
  Torn down after every other fixture of the test (``ray_head`` included).
  """
  path = short_temp_dir()
  monkeypatch.setenv("RAY_TMPDIR", path)
  try:
    yield path
    left = sorted(os.listdir(path)) + sorted(
        os.listdir(os.path.join(path, "ray")) if os.path.isdir(os.path.join(path, "ray")) else [])
    assert not left, f"left behind in Ray's default temp folder {path}: {left}"
  finally:
    shutil.rmtree(path, ignore_errors=True)


def assert_no_ray_processes(timeout=15.0):
  if not os.path.isdir("/proc"):
    return
  deadline = time.monotonic() + timeout
  while (left := descendants()) and time.monotonic() < deadline:
    time.sleep(0.5)
  assert not left, left


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_ray_sweep_has_the_local_rows_and_stops_its_ray(tmp_path, local_rows):
  ray = pytest.importorskip("ray")
  assert not ray.is_initialized()
  t0 = time.monotonic()
  # address "" starts a Ray instance here (it ships the code to its workers, as for a
  # remote cluster), one task per run with one CPU each, then shuts it down.
  # Its files go to a folder of its own, removed afterwards (ray_default_temp checks that
  # neither it nor Ray's default folder is left).
  out = sweep(tmp_path, "ray", {"address": "", "num_cpus": 1})
  print(f"ray sweep: {time.monotonic() - t0:.1f} s")
  assert metric_rows(tmp_path) == local_rows  # bit-identical values on CPU
  assert "claim accuracy_vs_centralized" in out
  # Each worker records where it computed its run (here: this host's CPU).
  assert [(e["host"], e["platform"]) for e in environments(tmp_path)] == \
      [(socket.gethostname(), "cpu")] * 2
  assert not ray.is_initialized()
  assert_no_ray_processes()


@pytest.mark.slow
def test_slurm_local_executor_sweep_has_the_local_rows(tmp_path, local_rows):
  pytest.importorskip("submitit")
  t0 = time.monotonic()
  sweep(tmp_path, "slurm", {"cluster": "local", "timeout_min": 10})
  print(f"submitit local sweep: {time.monotonic() - t0:.1f} s")
  assert metric_rows(tmp_path) == local_rows
  assert [(e["host"], e["platform"]) for e in environments(tmp_path)] == \
      [(socket.gethostname(), "cpu")] * 2
  # Default folder: <workdir>/slurm/<job id>/ with each job's logs and pickles.
  jobs = [j for j in os.listdir(tmp_path / "slurm") if os.listdir(tmp_path / "slurm" / j)]
  assert len(jobs) == 2


def free_port():
  """A free loopback port outside the range Ray reserves for its workers (10002-19999)."""
  while True:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    if port > 20000:
      return port


@pytest.fixture
def ray_head():
  """An existing Ray cluster: ``ray start --head --block`` as our child, stopped by pid.

  In a temp dir of its own, removed afterwards: ``ray start`` records its address in
  ``<temp dir>/ray_current_cluster`` and nothing removes that file when the cluster stops,
  so in Ray's default folder it would send every later ``ray.init()`` on the machine to
  a dead cluster.
  """
  pytest.importorskip("ray")
  port = free_port()
  temp_dir = short_temp_dir()
  ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
  # On loopback: a machine whose own address is not reachable from itself (a sandbox's)
  # would otherwise advertise that address to the drivers that connect.
  head = subprocess.Popen([ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                           "--include-dashboard=false", "--disable-usage-stats",
                           "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and head.poll() is None:
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
          if backends._speaks_grpc(conn):
            break
      except OSError:
        pass
      time.sleep(0.2)
    assert head.poll() is None, head.communicate()[0][-3000:]
    yield f"127.0.0.1:{port}", temp_dir
  finally:
    head.terminate()  # `ray start --block` stops its cluster's processes on SIGTERM
    try:
      head.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      head.kill()
      head.communicate()
    assert_no_ray_processes()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_existing_cluster_and_failures_come_back_as_the_workers_exception(tmp_path, ray_head):
  import ray

  address, head_dir = ray_head
  # More devices than a worker has: the FedAvg run fails in the worker with a ConfigError,
  # whose (field, expected, got) signature plain pickling cannot rebuild; centralized
  # ignores num_devices and succeeds.
  cfg = tiny_config(num_devices=64).to_dict()
  fed, central = RunSpec("fedavg", 0), RunSpec("centralized", 0)
  submit = backends.get("ray", {"address": address, "num_cpus": 1})
  assert ray.is_initialized()
  outcomes = dict(submit(execute_run, cfg, [fed, central], str(tmp_path)))
  assert isinstance(outcomes[fed], ConfigError) and outcomes[fed].field == "num_devices"
  assert "raised in Ray task" in outcomes[fed].__notes__[0]
  # One row, after its 72 steps (1 epoch of the 1,151 training images in batches of 16).
  [(step, sim_time, values)] = outcomes[central].rows
  assert step == 72 and sim_time is None and set(values) == {"accuracy", "loss", "client_lr"}
  assert not ray.is_initialized()  # disconnected; the cluster itself keeps running
  assert backends._resolve_address(address, address) == address
  # `ray start` recorded its address (once its node was up) in its own temp dir, not in Ray's
  # default folder (ray_default_temp checks that), where --ray.address=auto --ray.temp_dir=...
  # finds it.
  with open(os.path.join(head_dir, "ray_current_cluster")) as f:
    assert f.read().strip().endswith(":" + address.rsplit(":", 1)[1])


@pytest.mark.slow
def test_ray_request_no_node_can_hold_is_an_error_on_a_local_instance():
  ray = pytest.importorskip("ray")
  # In a --ray.temp_dir of the user's: Ray's files go there, and stay (for the logs).
  user_dir = short_temp_dir()
  try:
    with pytest.raises(ConfigError, match="--ray.num_cpus: expected at most"):
      backends.get("ray", {"num_cpus": 4096, "temp_dir": user_dir})
    assert not ray.is_initialized()
    assert [d for d in os.listdir(user_dir) if d.startswith("session_2")], os.listdir(user_dir)
  finally:
    shutil.rmtree(user_dir, ignore_errors=True)


@pytest.mark.slow
def test_submitit_failures_come_back_as_the_workers_exception(tmp_path):
  pytest.importorskip("submitit")
  cfg = tiny_config(num_devices=64).to_dict()
  fed = RunSpec("fedavg", 0)
  submit = backends.get("slurm", {"cluster": "local", "folder": str(tmp_path / "jobs")})
  [(spec, outcome)] = list(submit(execute_run, cfg, [fed], str(tmp_path)))
  assert spec == fed
  assert isinstance(outcome, ConfigError) and outcome.field == "num_devices", outcome
  assert "raised in local job" in outcome.__notes__[0]


SLEEPY = """
import time

def run(config, spec, workdir):
  if spec.seed:
    time.sleep(600)
  return [(spec.seed, None, {"x": 1.0})]
"""


@pytest.mark.slow
def test_closing_submit_early_cancels_pending_jobs(tmp_path, monkeypatch):
  pytest.importorskip("submitit")
  (tmp_path / "sleepy.py").write_text(SLEEPY)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  import sleepy

  # timeout_min bounds what a failed cancel would leave behind.
  submit = backends.get("slurm", {"cluster": "local", "folder": str(tmp_path / "jobs"),
                                  "timeout_min": 1})
  runs = submit(sleepy.run, {}, [RunSpec("m", 0), RunSpec("m", 1)], str(tmp_path))
  assert next(runs) == (RunSpec("m", 0), [(0, None, {"x": 1.0})])
  runs.close()  # as when the driver stops on an error: the sleeping job is cancelled
  deadline = time.monotonic() + 20
  while (left := descendants(("submitit",))) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not left, left


def test_submitit_debug_executor_runs_in_process(tmp_path):
  pytest.importorskip("submitit")
  submit = backends.get("slurm", {"cluster": "debug"})
  # pow(config, spec, workdir) raises TypeError: a cheap failing "run" that needs no JAX.
  [(spec, outcome)] = list(submit(pow, {}, [RunSpec("m", 0)], str(tmp_path)))
  assert spec == RunSpec("m", 0) and isinstance(outcome, TypeError)


# ---------------------------------------------------------------------------- bad input


def test_unreachable_ray_address_fails_fast_naming_the_flag():
  pytest.importorskip("ray")
  t0 = time.monotonic()
  with pytest.raises(ConfigError) as e:
    backends.get("ray", {"address": CLOSED})
  assert time.monotonic() - t0 < backends.CONNECT_TIMEOUT_S
  assert e.value.field == "--ray.address" and "refused" in str(e.value)
  assert CLOSED in str(e.value) and "\n" not in str(e.value)
  import ray

  assert not ray.is_initialized()


@pytest.mark.parametrize("address", ["nohost", "127.0.0.1:99999", "ray://127.0.0.1"])
def test_malformed_ray_address(address):
  pytest.importorskip("ray")
  with pytest.raises(ConfigError, match="--ray.address.*not host:port"):
    backends.get("ray", {"address": address})


class _FakeInit:
  """Stands in for ``ray.init``: records its arguments and what the temp dir held, then fails."""

  def __init__(self):
    self.kwargs = None

  def __call__(self, **kwargs):
    self.kwargs = kwargs
    self.existed = os.path.isdir(kwargs.get("_temp_dir") or "")
    raise RuntimeError("no Ray in this test")


def test_ray_instance_started_here_gets_its_own_temp_dir_removed_on_failure(monkeypatch,
                                                                           ray_default_temp):
  ray = pytest.importorskip("ray")
  from sweeps import backend_ray

  monkeypatch.delenv("RAY_ADDRESS", raising=False)
  fake = _FakeInit()
  monkeypatch.setattr(ray, "init", fake)
  with pytest.raises(RuntimeError, match="no Ray in this test"):
    backends.get("ray", {})
  # A fresh, short folder of its own under $RAY_TMPDIR (not $RAY_TMPDIR/ray, Ray's default),
  # removed again (ray_default_temp checks that nothing is left).
  path = fake.kwargs["_temp_dir"]
  assert fake.kwargs["address"] == "local" and fake.existed
  assert os.path.dirname(path) == ray_default_temp
  assert os.path.basename(path).startswith("jaxfl-ray-")
  assert len(path) <= backend_ray.MAX_TEMP_DIR_LEN and not os.path.exists(path)


def test_joining_a_cluster_passes_no_temp_dir(monkeypatch):
  ray = pytest.importorskip("ray")
  from sweeps import backend_ray

  fake = _FakeInit()
  monkeypatch.setattr(ray, "init", fake)
  monkeypatch.setattr(backend_ray, "_resolve_address", lambda address, *_: address)
  with pytest.raises(ConfigError, match="--ray.address.*ray.init failed"):
    backends.get("ray", {"address": "10.0.0.1:6379"})
  assert fake.kwargs["address"] == "10.0.0.1:6379" and "_temp_dir" not in fake.kwargs


def test_auto_address_is_looked_up_in_the_given_temp_dir(monkeypatch):
  """``auto`` with ``--ray.temp_dir`` reads the address ``ray start --temp-dir`` recorded there."""
  pytest.importorskip("ray")
  monkeypatch.delenv("RAY_ADDRESS", raising=False)
  path = short_temp_dir()
  try:
    with open(os.path.join(path, "ray_current_cluster"), "w") as f:
      f.write(CLOSED)
    # (Ray rewrites 127.0.0.1 to this machine's address.)
    with pytest.raises(ConfigError, match="--ray.address.*connecting to .*:1 failed.*refused"):
      backends.get("ray", {"address": "auto", "temp_dir": path})
  finally:
    shutil.rmtree(path)


@pytest.mark.parametrize("backend,options,field", [
    ("ray", {"num_cpus": -1}, "--ray.num_cpus"),
    ("ray", {"num_cpus": "two"}, "--ray.num_cpus"),
    ("ray", {"num_gpus": float("nan")}, "--ray.num_gpus"),
    ("ray", {"num_gpus": 1.5}, "--ray.num_gpus"),
    ("ray", {"num_gpus": 0.00001}, "--ray.num_gpus"),
    ("ray", {"adress": CLOSED}, "--ray.adress"),
    ("ray", {"temp_dir": 7}, "--ray.temp_dir"),
    ("ray", {"temp_dir": "/tmp/" + "x" * 60}, "--ray.temp_dir"),  # no room for Ray's sockets
    ("ray", {"temp_dir": os.path.abspath(__file__)}, "--ray.temp_dir"),  # a file
    # Joining a cluster: its nodes' temp dir is theirs (checked before connecting).
    ("ray", {"address": CLOSED, "temp_dir": "/tmp/x"}, "--ray.temp_dir"),
    ("slurm", {"cluster": "pbs"}, "--slurm.cluster"),
    ("slurm", {"cluster": "local", "timeout_min": 0}, "--slurm.timeout_min"),
    ("slurm", {"cluster": "local", "timeout_min": 1.5}, "--slurm.timeout_min"),
    ("slurm", {"cluster": "local", "gpus_per_node": -1}, "--slurm.gpus_per_node"),
    ("slurm", {"cluster": "local", "cpus_per_task": 0}, "--slurm.cpus_per_task"),
    ("slurm", {"cluster": "local", "mem_gb": 0}, "--slurm.mem_gb"),
    ("local", {"num_cpus": 1}, "--local.num_cpus"),
    ("mars", {}, "--backend"),
])
def test_bad_options_name_the_flag(backend, options, field):
  with pytest.raises(ConfigError) as e:
    backends.get(backend, options)
  assert e.value.field == field


def test_slurm_cluster_needs_slurm():
  if shutil.which("sbatch"):
    pytest.skip("Slurm is installed here")
  pytest.importorskip("submitit")
  with pytest.raises(ConfigError, match="--slurm.cluster.*'local' or 'debug'"):
    backends.get("slurm", {})


@pytest.mark.parametrize("module,backend", [("ray", "ray"), ("submitit", "slurm")])
def test_missing_package_names_the_install_command(monkeypatch, module, backend):
  monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
  with pytest.raises(ConfigError) as e:
    backends.get(backend, {"cluster": "local"} if backend == "slurm" else {})
  assert e.value.field == "--backend" and backends.INSTALL in str(e.value)


def _launch(tmp_path, capsys, monkeypatch, *extra):
  monkeypatch.chdir(ROOT)
  workdir = tmp_path / "runs"
  code = launch.main(["launch", f"--config={CONFIG}", "--config.num_seeds=1",
                      "--config.num_clients=8", "--config.clients_per_round=4", *extra,
                      f"--workdir={workdir}"])
  err = capsys.readouterr().err.strip()
  return code, err, workdir


@pytest.mark.parametrize("extra,field", [
    (["--backend=ray", f"--ray.address={CLOSED}"], "--ray.address"),
    (["--backend=ray", "--ray.num_gpus=-1"], "--ray.num_gpus"),
    (["--backend=ray", "--ray.num_cpus=lots"], "--ray.num_cpus"),
    (["--backend=slurm", "--slurm.cluster=pbs"], "--slurm.cluster"),
    (["--backend=slurm", "--slurm.cluster=local", "--slurm.timeout_min=0"], "--slurm.timeout_min"),
    (["--backend=mars"], "--backend"),
])
def test_launcher_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, extra, field):
  if "--backend=ray" in extra:
    pytest.importorskip("ray")
  if "--slurm.cluster=local" in extra:
    pytest.importorskip("submitit")
  code, err, workdir = _launch(tmp_path, capsys, monkeypatch, *extra)
  assert code == 2, err
  assert len(err.splitlines()) == 1, err
  assert err.startswith(f"error: {field}: expected"), err
  assert not os.path.exists(results_path(workdir))


def test_options_from_flags():
  fv = flags.FlagValues()
  backends.define_flags(fv)
  fv(["prog", "--ray.address=10.0.0.1:6379", "--ray.num_gpus=1", "--slurm.cluster=local",
      "--slurm.mem_gb=16", "--slurm.partition=gpu"])
  assert backends.options_from_flags(fv, "local") == {}
  assert backends.options_from_flags(fv, "ray") == {
      "address": "10.0.0.1:6379", "num_cpus": 1.0, "num_gpus": 1.0, "temp_dir": ""}
  assert backends.options_from_flags(fv, "slurm") == {
      "cluster": "local", "folder": "", "partition": "gpu", "timeout_min": 120,
      "gpus_per_node": 0, "cpus_per_task": None, "mem_gb": 16.0}
  with pytest.raises(ConfigError, match="--backend"):
    backends.options_from_flags(fv, "mars")


# ---------------------------------------------------------------------------- results


def test_worker_exceptions_survive_pickling():
  kind, failure = backends._call_run(
      lambda *a: (_ for _ in ()).throw(ConfigError("num_devices", "at most 8", 64)), {}, None, "")
  assert kind == "error"
  e = backends._outcome(pickle.loads(pickle.dumps((kind, failure))), "a test")
  assert type(e) is ConfigError and (e.field, e.expected, e.got) == ("num_devices", "at most 8", 64)
  assert str(e) == "num_devices: expected at most 8, got 64"
  assert "raised in a test" in e.__notes__[0] and "ConfigError" in e.__notes__[0]

  class Local(Exception):  # not importable by name: travels as text
    pass

  def fail(*args):
    raise Local("boom")

  e = backends._outcome(pickle.loads(pickle.dumps(backends._call_run(fail, {}, None, ""))), "x")
  assert type(e) is backends.RemoteError and "Local: boom" in str(e)
  assert backends._call_run(lambda c, s, w: [(1, None, {})], {}, None, "") == (
      "ok", [(1, None, {})])


def test_ray_worker_env(monkeypatch):
  for var in ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "XLA_PYTHON_CLIENT_MEM_FRACTION",
              "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_ALLOCATOR"):
    monkeypatch.delenv(var, raising=False)
  # No GPU requested: Ray hides the GPUs again; a half GPU: half of JAX's usual 75%.
  assert backends._worker_env({"num_gpus": 0.0}) == {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
  assert backends._worker_env({"num_gpus": 0.5})["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.3750"
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in backends._worker_env({"num_gpus": 1.0})
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the user's choice wins
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in backends._worker_env({"num_gpus": 0.5})


def test_local_backend_through_the_same_interface(tmp_path):
  outcomes = list(backends.get("local", {})(pow, {}, [RunSpec("m", 0)], str(tmp_path)))
  assert isinstance(outcomes[0][1], TypeError)


# ---------------------------------------------------------------------------- multi-host

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
             "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
             "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")


@pytest.mark.parametrize("env", [
    {},
    {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234", "JAX_NUM_PROCESSES": "1"},
    {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1",
     "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
    {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"},  # an sbatch script outside an srun step
])
def test_maybe_initialize_distributed_is_a_no_op_on_one_host(monkeypatch, env):
  import jax

  for var in _DIST_ENV:
    monkeypatch.delenv(var, raising=False)
  for var, value in env.items():
    monkeypatch.setenv(var, value)
  assert backends.maybe_initialize_distributed() is False
  assert not jax.distributed.is_initialized() and jax.process_count() == 1


def test_maybe_initialize_distributed_names_a_missing_variable(monkeypatch):
  for var in _DIST_ENV:
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES"):
    backends.maybe_initialize_distributed()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ConfigError, match="JAX_PROCESS_ID"):
    backends.maybe_initialize_distributed()


_SUITE_XLA_FLAGS = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                            if not f.startswith("--xla_force_host_platform_device_count"))

_TWO_HOSTS = textwrap.dedent("""
  import json
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from sweeps.backends import maybe_initialize_distributed
  assert maybe_initialize_distributed()  # before anything else touches JAX
  from jaxfl.runtime import ClientAxis, client_mesh, client_weighted_sum
  axis = ClientAxis(client_mesh())  # every device of every process
  # 16 clients, 2 per device; this process holds its 8 (values 8 * process + 0..7).
  block = np.arange(8, dtype=np.float32) + 8 * jax.process_index()
  clients = jax.make_array_from_process_local_data(NamedSharding(axis.mesh, P("devices")), block)
  total = jax.jit(axis.map(lambda x: client_weighted_sum(x, jnp.ones_like(x), axis.axis_name),
                           (0,), None))(clients)
  print(json.dumps(dict(processes=jax.process_count(), devices=jax.device_count(),
                        local=jax.local_device_count(), mesh=axis.mesh.size,
                        total=float(np.asarray(total.addressable_data(0))))))
  jax.distributed.shutdown()
""")


@pytest.mark.slow
def test_two_processes_share_one_client_mesh(tmp_path):
  """Multi-host as far as one machine allows: two processes over loopback, 4 CPU devices each."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
  env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
             JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             XLA_FLAGS=f"{_SUITE_XLA_FLAGS} --xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", _TWO_HOSTS], cwd=ROOT,
                            env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got == {"processes": 2, "devices": 8, "local": 4, "mesh": 8, "total": 120.0}


_LAUNCH_TINY = ["--config=sweeps/configs/fedavg.py:quick", "--config.num_seeds=1",
                "--config.num_rounds=4", "--config.eval_every=2", "--config.checkpoint_every=2",
                "--config.central_epochs=1", "--config.num_clients=8",
                "--config.clients_per_round=4"]


@pytest.mark.slow
def test_launcher_on_two_processes_gives_the_one_process_rows(tmp_path, local_rows):
  """Every process runs the same launch command; the client axis spans both processes'
  devices (2 each), process 0 alone writes the database, and the rows are those of the
  same sweep in one process (``local_rows``: vmap on one device)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
  # The suite's XLA flags without its 8 host devices (JAX_NUM_CPU_DEVICES sets 2 here).
  env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
             JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", XLA_FLAGS=_SUITE_XLA_FLAGS)
  cmd = [sys.executable, "-m", "sweeps.launch", *_LAUNCH_TINY, "--config.num_devices=0",
         f"--workdir={tmp_path}"]
  procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(i)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  assert "claim accuracy_vs_centralized" in outs[0]
  assert "claim" not in outs[1] and "runs 1/2" not in outs[1]  # process 1 writes nothing
  rows, runs = metric_rows(tmp_path)
  assert runs == local_rows[1]
  assert [r[:4] for r in rows] == [r[:4] for r in local_rows[0]]
  # Sharded over 4 devices in 2 processes vs vmapped on one device: the same math, summed
  # in another order (measured: bit-identical to one process sharding over 4 devices).
  for got, want in zip(rows, local_rows[0]):
    assert got[5] == pytest.approx(want[5], rel=1e-5, abs=1e-6), (got, want)
