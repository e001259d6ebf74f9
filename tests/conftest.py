"""Test configuration: 8 host CPU devices (for shard_map), rank promotion errors, keys,
fast compilation, and one XLA compilation cache for the session (removed at its end).

The cache (``JAX_COMPILATION_CACHE_DIR``, inherited by the launcher subprocesses the
tests start) lets the many runs of the same small programs -- a sweep relaunched after a
kill, the same FedAvg round in several backends -- compile once. It holds executables,
not results: every run still computes its own numbers.
"""

import atexit
import logging
import os
import shutil
import tempfile
import time

# Must precede the first JAX operation anywhere in the test session.
# LLVM at -O0 halves XLA:CPU compile times (measured 8 s -> 4 s on a simulation's scan) and
# the suite compiles far more than it runs; XLA's own (HLO) passes are unchanged.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # made here: removed when this process ends
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxfl-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Every program into that cache, not only those over JAX's default 1 s of compile time: the
# suite compiles many small programs again in other tests and in launcher subprocesses.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Programs without progress ticks, so that they enter that cache too (JAX caches no
# executable holding a host callback: jaxfl.progress). The values are the same; the tests
# of progress and of Ctrl-C turn ticks on (the `ticks` fixture), as do end-to-end runs as a
# user makes them (`user_xla`).
os.environ.setdefault("JAXFL_PROGRESS_TICKS", "0")
#: The suite's XLA flags without LLVM -O0 (the optimisation level a user's process has).
USER_XLA_FLAGS = " ".join(f for f in os.environ["XLA_FLAGS"].split()
                          if f != "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def user_xla(monkeypatch):
  """Child processes started in this test compile at LLVM's default level and with
  progress ticks, as a user's do:
  for an end-to-end run that computes more than it compiles (measured: the notebook 19.8 ->
  14.5 s, the README command 14.0 -> 10.3 s) and whose numbers are compared with nothing
  this process computed (the level may change float rounding)."""
  monkeypatch.setenv("XLA_FLAGS", USER_XLA_FLAGS)
  monkeypatch.setenv("JAXFL_PROGRESS_TICKS", "1")


@pytest.fixture
def ticks(monkeypatch):
  """Programs traced in this test (and its child processes) report progress and see stop
  requests from inside (jaxfl.progress.tick), as they do outside the suite."""
  monkeypatch.setenv("JAXFL_PROGRESS_TICKS", "1")


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)


# The two xdist workers take whole files (--dist loadfile, for the module fixtures) from
# one queue. Longest first, so the short files fill in at the end and both workers finish
# together (measured: ~30 s of one worker idle otherwise; xdist's own order is by number of
# tests, which put the one 25 s notebook test last). Seconds per file from
# `pytest --durations=0`, rounded; files not listed follow in collection order.
LONGEST_FILES = (
    "tests/sweeps/test_backends.py",  # 62 s
    "tests/experiments/test_cocodc.py",  # 41
    "tests/sweeps/test_sweep.py",  # 34
    "tests/sweeps/test_launch.py",  # 31
    "tests/test_docs.py",  # 28
    "tests/experiments/test_fedlora_and_lm_pretrain.py",  # 26
    "tests/experiments/test_air_fedga.py",  # 26
    "tests/test_notebook.py",  # 25
    "tests/jaxfl/algorithms/test_base.py",  # 25
    "tests/test_install.py",  # 21
    "tests/jaxfl/algorithms/test_grouped_async.py",  # 21
    "tests/jaxfl/peft/test_peft.py",  # 21
    "tests/sweeps/test_sweep_grid.py",  # 18
    "tests/experiments/test_prism.py",  # 18
    "tests/jaxfl/algorithms/test_streaming_diloco.py",  # 17
    "tests/experiments/test_bench_lm.py",  # 16
)


def pytest_collection_modifyitems(config, items):
  del config
  rank = {path: i for i, path in enumerate(LONGEST_FILES)}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  key = lambda item: rank.get(os.path.relpath(str(item.path), root), len(rank))
  items.sort(key=key)  # stable: a file's tests keep their order


def config_flags(config, variant: str = "quick") -> list[str]:
  """``--config.<path>=<value>`` for every field of ``config`` that differs from its config
  file's ``variant`` (``sweeps/configs/<experiment>.py``): the launcher's command line for
  a config a test built."""
  import importlib

  base = importlib.import_module(f"sweeps.configs.{config.experiment}").get_config(variant)

  def leaves(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from leaves(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  default = dict(leaves(base.to_dict()))
  return [f"--config.{k}={v}" for k, v in leaves(config.to_dict()) if default.get(k) != v]


@pytest.fixture
def sigint_launch(capsys, caplog, ticks):
  """``run(config, workdir, *flags) -> (argv, {(method, seed): status})``: the launcher
  in this process, sent a real SIGINT at the first progress tick of a running family call
  (from XLA's callback thread: the main thread is then waiting inside the call); checked
  as :func:`assert_interrupted` says (a host loop's Ctrl-C: tests/sweeps/test_sweep.py).
  ``argv``: the launcher's command line, to relaunch."""
  import signal

  from sweeps import launch, sweep_local

  ticks, sent = [], []

  def interrupt():
    if not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGINT)
      # The kernel hands the signal to the main thread, whose C-level handler writes it to
      # the wakeup pipe when that thread is next scheduled: give it the time, so the stop
      # lands at the next tick (the behaviour tested), not at a later one.
      time.sleep(0.3)

  real_sink = sweep_local._rows_sink

  def rows_sink(prog, rows):
    shown = real_sink(prog, rows)

    def sink(done, total):
      ticks.append((done, total))
      shown(done, total)
      interrupt()

    return sink

  def run(config, workdir, *extra):
    capsys.readouterr()
    argv = ["launch", f"--config=sweeps/configs/{config.experiment}.py:quick",
            *config_flags(config), f"--workdir={workdir}", *extra]
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(sweep_local, "_rows_sink", rows_sink)
      code = launch.main(argv)
    assert sent, "the launch ended before it could be interrupted"
    # No error logged (JAX logs each failing callback, traceback and all), and no failed
    # effect token left for the next program or JAX's exit handler to raise.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    jax.effects_barrier()
    return argv, assert_interrupted(code, capsys.readouterr().err, ticks, workdir)

  return run


def statuses(workdir) -> dict[tuple[str, int], str]:
  """``{(method, seed): status}`` of every run in a workdir's results database."""
  from sweeps.results import ResultsDB, results_path

  with ResultsDB(results_path(workdir)) as db:
    return {(r["method"], r["seed"]): r["status"] for r in db.runs()}


def assert_interrupted(code, err, ticks, workdir):
  """What every interrupted launch must show: exit 130 and the one line; the call that was
  running stopped before its last step; its runs interrupted, none failed or left running."""
  assert code == 130, err[-3000:]
  lines = err.strip().splitlines()
  assert lines[-1] == "interrupted; relaunch the same command to resume", lines[-5:]
  assert sum(line.startswith("SIGINT: stopping at the next step") for line in lines) == 1
  assert max(d for d, _ in ticks) < ticks[0][1], ticks  # the call ended before its last tick
  got = statuses(workdir)
  assert "interrupted" in got.values() and not {"failed", "running"} & set(got.values()), got
  return got
