"""The experiment launcher.

  python -m sweeps.launch --config sweeps/configs/<name>.py[:variant] [--config.key=value ...]
                          [--workdir DIR] [--backend local|ray|slurm] [--sweep]
                          [--novmap_seeds] [--nocompilation_cache] [--print_config]
  python -m sweeps.launch --help [--config FILE[:variant]]   # flags, and the config's fields

Parses the config (ml_collections ``config_flags``: ``get_config(variant)`` plus
``--config.key=value`` overrides), validates it, and runs the experiment named by
``config.experiment``. Results go to ``<workdir>/results.sqlite``, each config's report
under ``<workdir>/<experiment>/<variant>[,<overrides>]-<hash>/``
(:mod:`sweeps.provenance`). ``--sweep`` runs every point of the config file's
``get_sweep()`` grid instead (a point's values override the command line's), each
reported under ``<experiment>/sweep/<point>/``, with ``sweep.md`` over all points.
On the local backend an experiment's method families run as vmapped calls over seeds
and tuning grids (:mod:`sweeps.families`); ``--novmap_seeds`` runs an experiment that also
has a per-run host loop (FedAvg) one run at a time, with checkpoints. Compiled programs
are kept in JAX's persistent cache under ``$JAXFL_CACHE_DIR/xla`` (default
``~/.cache/jaxfl/xla``; ``--nocompilation_cache`` turns it off), so a relaunch does not
recompile.

Multi-host: when the environment describes a multi-process JAX job (``srun``,
``mpirun``, or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``),
every process runs this same command; ``jax.distributed.initialize()`` runs first, the
client axis shards over every process's devices, and process 0 writes the results.

``--print_config`` validates the config (overrides applied) and prints it with its hash
instead of running. ``--help`` lists the launcher's flags and, given ``--config``, every
field of that config with its value: each is overridable as ``--config.<field>=<value>``.

Ctrl-C (or SIGTERM) stops the run within a step: the work in progress ends at its next
progress tick or round, finished runs and written checkpoints are kept, the unfinished
runs are marked ``interrupted``, and the launcher prints "interrupted; relaunch the same
command to resume" and exits with 130 (143 for SIGTERM). A second Ctrl-C is ignored with
a line. Relaunching resumes: done runs are skipped, interrupted ones resume from their
checkpoints or recompute their family call.

Bad input ends with one line naming the field and what was expected, exit code 2,
nothing written; a misspelt override names the whole key and the field it was probably
meant to be (``--config.num_seed=2`` -> "did you mean --config.num_seeds?").
"""

from __future__ import annotations

import os
import re
import signal
import sys
import warnings

from absl import flags
from ml_collections import config_flags

from jaxfl import progress
from jaxfl.errors import ConfigError
from jaxfl.loop import DivergenceError
from sweeps import configs
from sweeps.backends import BACKENDS

warnings.filterwarnings("ignore", category=DeprecationWarning, module="ml_collections")



def _define_flags(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  # config_flags discovers the --config.* overrides in sys_argv (default: sys.argv).
  config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", "runs", "where results, reports and checkpoints go",
                      flag_values=fv)
  flags.DEFINE_string("backend", "local", f"one of {list(BACKENDS)}", flag_values=fv)
  flags.DEFINE_bool("sweep", False, "run every point of the config file's get_sweep() grid",
                    flag_values=fv)
  flags.DEFINE_bool("compilation_cache", True, "keep compiled XLA programs under "
                    "$JAXFL_CACHE_DIR/xla (default ~/.cache/jaxfl/xla), so a relaunch does "
                    "not recompile", flag_values=fv)
  flags.DEFINE_bool("print_config", False, "validate the config and print it (overrides "
                    "applied) with its hash, then exit without running", flag_values=fv)
  flags.DEFINE_bool("vmap_seeds", True, "local backend: run method families as vmapped "
                    "calls; false runs an experiment with a per-run loop run by run, with "
                    "checkpoints", flag_values=fv)
  from sweeps import backends

  backends.define_flags(fv)  # --ray.* and --slurm.* options
  return fv


def fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def _config_path(argv: list[str]) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _overrides(argv: list[str]) -> list[str]:
  """The dotted keys of the ``--config.<key>=value`` (or ``--config.<key> value``) overrides."""
  return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def _unknown_field(e: Exception, argv: list[str]) -> str:
  """``--config.<key>: expected ...`` for an override of a field the config does not have.

  ml_collections names only the missing component (``'num_seed'``), with its own
  suggestion (``Did you mean "num_seeds" ...``); the override it came from gives the
  whole key, and the suggestion is spelt as the flag to type.
  """
  text = str(e).replace("\\'", "'")
  found = re.search(r"'([^'\"\\]+)'", text)
  name = (found.group(1) if found else text).removeprefix("config.")
  keys = [k for k in _overrides(argv) if name in k.split(".")]
  key = keys[0] if len(keys) == 1 else name
  message = f"--config.{key}: expected a field of the config (see --help --config=FILE)"
  suggestion = re.search(r'Did you mean "([^"]+)"', text)
  if suggestion:
    parts = key.split(".")
    at = parts.index(name) if name in parts else len(parts) - 1
    meant = ".".join(parts[:at] + [suggestion.group(1)])
    message += f"; did you mean --config.{meant}?"
  return message


def _config_file_error(e: Exception, spec: str) -> str | None:
  """The error ``get_config`` itself raised (e.g. ``variant: expected one of ...``), named
  as it is, or None when the file could not be loaded at all."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  head, _, rest = (lines[-1] if lines else "").partition(": ")
  if head.endswith(("Error", "Exception")) and head != "SyntaxError" and ": expected" in rest:
    return f"{rest} (in --config={spec})"
  return None


def _flag_error(e: Exception, argv: list[str]) -> str:
  """One line from a flag-parsing error (config_flags embeds tracebacks and bare keys)."""
  if isinstance(e, (KeyError, AttributeError, flags.UnrecognizedFlagError)):
    return _unknown_field(e, argv)
  bad_value = re.match(r"flag (--[\w.]+)=(.*?): (.*)$", str(e))
  if bad_value and "Traceback" not in str(e):
    flag, value, why = bad_value.groups()
    return f"{flag}: expected a value of the field's type, got {value!r} ({why})"
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  last = lines[-1] if lines else repr(e)
  # "ValueError: variant: expected ..." -> "variant: expected ..."
  head, _, rest = last.partition(": ")
  return rest if head.endswith(("Error", "Exception")) and rest else last


def _fields(config, prefix: str = "") -> list[str]:
  """``--config.<field>=<value>`` for every leaf of ``config`` (blocks field by field)."""
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += _fields(value, f"{prefix}{key}.")
    else:
      out.append(f"  --config.{prefix}{key}={value!r}")
  return out


def _help(fv: flags.FlagValues, argv: list[str]) -> str:
  """The usage lines, every flag, and the fields of the config ``--config`` names."""
  usage = "\n\n".join(__doc__.split("\n\n")[:2])
  text = f"{usage}\n\nflags:\n{fv.get_help()}\n"
  spec = _config_path(argv)
  if spec is None:
    return text + "\n(give --config=FILE[:variant] as well to list that config's fields)\n"
  try:
    fv([a for a in argv if a not in ("--help", "-h", "--helpfull")])
    config = fv.config
  except Exception as e:  # noqa: BLE001 -- the help still lists the flags
    return text + f"\n(the config's fields are not listed: {_flag_error(e, argv)})\n"
  return (text + f"\nfields of {spec} (override with --config.<field>=<value>):\n"
          + "\n".join(_fields(config)) + "\n")


def _use_cpu_cores(config) -> None:
  """Give JAX the CPU devices a config asks for: ``num_devices`` of them, or one per core for 0.

  The client axis shards clients over devices; on a CPU host, XLA exposes one device
  unless told otherwise, so a round would use one core's worth of parallelism. This
  must run before JAX's first operation; an explicit ``JAX_NUM_CPU_DEVICES`` or XLA_FLAGS
  device count wins (e.g. per process of a multi-host run, where ``num_devices=0`` means
  every device of every process).
  """
  wanted = config.get("num_devices", 1)
  if (not isinstance(wanted, int) or wanted == 1 or "JAX_NUM_CPU_DEVICES" in os.environ
      or "host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
    return
  import jax

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  jax.config.update("jax_num_cpu_devices", wanted if wanted > 0 else (cores or 1))


def _use_compilation_cache(enabled: bool) -> None:
  """JAX's persistent compilation cache under jaxfl's cache folder (a relaunch, a resumed
  sweep or the next variant of a config reuses every executable that took over a second
  to compile). An explicit ``JAX_COMPILATION_CACHE_DIR`` wins; ``--nocompilation_cache``
  turns it off."""
  if not enabled or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import jax

  from jaxfl import cache_dir

  jax.config.update("jax_compilation_cache_dir", os.path.join(cache_dir(), "xla"))


def _grid(path: str) -> list[dict]:
  """The config file's ``get_sweep()`` grid."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  grid = getattr(module, "get_sweep", None)
  if grid is None:
    raise ConfigError("--sweep", f"a config file defining get_sweep() ({path} has none)", path)
  return list(grid())


def main(argv: list[str] | None = None, *, exits: bool = False) -> int:
  """The launcher; returns its exit code. ``exits``: the process ends when this returns
  (``python -m sweeps.launch``), so after a Ctrl-C stop, further ones are ignored."""
  argv = list(sys.argv if argv is None else argv)
  spec = _config_path(argv)
  wants_help = any(a in ("--help", "-h", "--helpfull") for a in argv)
  if spec is None and not wants_help:
    return fail("--config: expected a config file, e.g. sweeps/configs/fedavg.py:quick "
                "(--help lists the flags)")
  path = (spec or "").split(":", 1)[0]
  if spec is not None and not os.path.isfile(path):
    return fail(f"--config: expected an experiment config file (one of {configs.names()} under "
                f"sweeps/configs/), got {path!r}")
  if wants_help:
    print(_help(_define_flags(argv), argv))
    return 0
  fv = _define_flags(argv)
  try:
    fv(argv)
    config = fv.config
  except ConfigError as e:
    return fail(f"config.{e}")
  except Exception as e:  # noqa: BLE001 -- anything wrong with the config file or a flag
    raised = _config_file_error(e, spec)
    if raised is not None:  # get_config's own error (e.g. an unknown variant)
      return fail(raised)
    if isinstance(e, SyntaxError) or "SyntaxError" in str(e) or "get_config" in str(e):
      return fail(f"--config: expected a Python file defining get_config(variant), got {path!r}")
    return fail(_flag_error(e, argv))
  if fv.backend not in BACKENDS:
    return fail(f"--backend: expected one of {list(BACKENDS)}, got {fv.backend!r}")
  if os.path.exists(fv.workdir) and not os.path.isdir(fv.workdir):
    return fail(f"--workdir: expected a directory, got {fv.workdir!r} (an existing file)")

  _use_cpu_cores(config)
  _use_compilation_cache(fv.compilation_cache)
  from sweeps import backends, experiments
  from sweeps.grid import run_grid
  from sweeps.sweep import run_sweep

  try:
    backends.maybe_initialize_distributed()  # before JAX's first operation
    runner = experiments.get(config.experiment)
    try:
      runner.validate(config)
    except (AttributeError, KeyError) as e:  # a field the experiment needs is missing
      missing = re.search(r"([A-Za-z_]\w*)\\?'", str(e))
      return fail(f"config.experiment: expected the experiment this config file was written "
                  f"for, got {config.experiment!r} (the config has no field "
                  f"{missing.group(1) if missing else e!r})")
    if fv.print_config:
      from sweeps.results import config_hash

      print(f"# {spec}, config hash {config_hash(config)}\n{config}", end="")
      return 0
    options = dict(backend=fv.backend, vmap_seeds=fv.vmap_seeds,
                   backend_options=backends.options_from_flags(fv, fv.backend))
    with progress.stop_on_signals(ignore_after_stop=exits):  # Ctrl-C: stop at the next step
      if fv.sweep:
        run_grid(runner, config, _grid(path), fv.workdir, **options)
      else:
        run_sweep(runner, config, fv.workdir, **options)
  except progress.Interrupted as e:
    print("interrupted; relaunch the same command to resume", file=sys.stderr)
    return 128 + (e.signum or signal.SIGINT)
  except ConfigError as e:
    # Flags (--sweep) and grid entries (get_sweep()[...]) are named as they are.
    return fail(str(e) if e.field.startswith("-") or "(" in e.field else f"config.{e}")
  except DivergenceError as e:
    print(f"error: diverged: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(exits=True))
