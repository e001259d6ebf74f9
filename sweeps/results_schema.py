"""What the results database stores, and how: its SQL schema, input checks, config hashes.

The schema of :mod:`sweeps.results` and its upgrades, the validation every write applies
to its inputs (errors name the field), the canonical JSON and hash that identify a
run's config, and the errors for a workdir or file that cannot hold results.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import sqlite3
from collections.abc import Mapping
from typing import Any

from jaxfl.errors import ConfigError

FILENAME = "results.sqlite"
SCHEMA_VERSION = 4
HASH_CHARS = 16  # hex chars of sha256 kept: 64 bits, collision-free for any sweep size.
#: A launch enters its runs as ``pending``; each is ``running`` from when its computation
#: starts, then ``done``, ``failed``, or ``interrupted`` (stopped by Ctrl-C: resumed by the
#: next launch, as a failed one is).
STATUSES = ("pending", "running", "done", "failed", "interrupted")
FINISHED = ("done", "failed", "interrupted")

_INT64 = (-(2**63), 2**63 - 1)

_RUNS = """
CREATE TABLE IF NOT EXISTS {name} (
  id INTEGER PRIMARY KEY,
  experiment TEXT NOT NULL,
  variant TEXT,
  method TEXT NOT NULL,
  config_json TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  seed INTEGER NOT NULL,
  status TEXT NOT NULL CHECK(status IN ({statuses})),
  host TEXT,
  pid INTEGER,
  start_time REAL,
  end_time REAL,
  error TEXT,
  attempts INTEGER NOT NULL DEFAULT 1,
  info TEXT,
  UNIQUE(experiment, config_hash, method, seed)
)"""

_SCHEMA = _RUNS.format(name="runs", statuses=", ".join(f"'{x}'" for x in STATUSES)) + """;
CREATE TABLE IF NOT EXISTS metrics (
  run_id INTEGER NOT NULL REFERENCES runs(id),
  step INTEGER NOT NULL,
  sim_time REAL,
  name TEXT NOT NULL,
  value REAL,
  PRIMARY KEY(run_id, step, name)
);
-- Serves "all values of metric X" and the per-run largest-step lookups of final_metrics.
CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics(name, run_id, step);
CREATE TABLE IF NOT EXISTS reports (
  experiment TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  out TEXT NOT NULL,
  sweep TEXT,
  registered REAL NOT NULL,
  PRIMARY KEY(experiment, config_hash, out)
);
-- One row per launch that computed runs of a config: where its results came from.
CREATE TABLE IF NOT EXISTS launches (
  id INTEGER PRIMARY KEY,
  experiment TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  time REAL NOT NULL,
  facts TEXT NOT NULL
);
CREATE VIEW IF NOT EXISTS final_metrics AS
  SELECT r.id AS run_id, r.experiment, r.variant, r.method, r.config_hash, r.seed, r.status,
         m.name, m.step, m.sim_time, m.value
  FROM metrics m JOIN runs r ON r.id = m.run_id
  WHERE m.step = (SELECT MAX(step) FROM metrics m2
                  WHERE m2.run_id = m.run_id AND m2.name = m.name);
"""

_RUN_COLUMNS = ("id", "experiment", "variant", "method", "config_json", "config_hash", "seed",
                "status", "host", "pid", "start_time", "end_time", "error", "attempts", "info")
# Version-1 files gain what version 2 added, and version-3 files what version 4 added
# (CREATE ... IF NOT EXISTS adds the reports and launches tables). Version 3 widened the
# status CHECK constraint, which SQLite cannot alter: the runs table is rebuilt under the
# same ids (metrics keep pointing at their runs; ResultsDB turns foreign keys off for an
# upgrade and checks them after), and its view made again (_SCHEMA).
_UPGRADES = {
    1: ["ALTER TABLE runs ADD COLUMN info TEXT"],
    2: ["DROP VIEW IF EXISTS final_metrics",
        _RUNS.format(name="runs_v3", statuses=", ".join(f"'{x}'" for x in STATUSES)),
        f"INSERT INTO runs_v3 ({', '.join(_RUN_COLUMNS)}) "
        f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs",
        "DROP TABLE runs",
        "ALTER TABLE runs_v3 RENAME TO runs"],
}

# ---------------------------------------------------------------------------- validation


def _text(field: str, value: Any, *, optional: bool = False) -> str | None:
  if value is None and optional:
    return None
  if not isinstance(value, str) or not value:
    expected = "a non-empty string" + (" or None" if optional else "")
    raise ValueError(f"{field}: expected {expected}, got {value!r}")
  return value


def _int(field: str, value: Any, *, minimum: int | None = None) -> int:
  # operator.index accepts numpy/JAX integer scalars but not floats or strings; bools are
  # ints to Python but always a mistake here.
  try:
    if isinstance(value, bool):
      raise TypeError
    n = operator.index(value)
  except TypeError:
    raise ValueError(f"{field}: expected an integer, got {value!r}") from None
  low = _INT64[0] if minimum is None else minimum
  if not low <= n <= _INT64[1]:
    raise ValueError(f"{field}: expected an integer in [{low}, {_INT64[1]}], got {n}")
  return n


def _float(field: str, value: Any) -> float | None:
  """A finite float, or None. Strings are refused although float() would parse them."""
  if value is None:
    return None
  if isinstance(value, (str, bytes, bool)):
    raise ValueError(f"{field}: expected a finite number or None, got {value!r}")
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{field}: expected a finite number or None, got {value!r}") from None
  if not math.isfinite(x):
    raise ValueError(f"{field}: expected a finite number or None, got {x!r} "
                     "(a diverging run should stop before logging)")
  return x


def _json_default(obj: Any) -> Any:
  # numpy / JAX scalars and arrays, which configs and sweeps often carry.
  if hasattr(obj, "tolist"):
    return obj.tolist()
  raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def canonical_json(config: Mapping[str, Any]) -> str:
  """The canonical JSON text of a config: sorted keys, no whitespace, no NaN.

  Accepts a mapping or anything with ``to_dict()`` (``ml_collections.ConfigDict``).
  Tuples become lists, numpy/JAX values become Python numbers or lists.

  Raises:
    ValueError: naming ``config`` when it is not a mapping or not JSON-serializable.
  """
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise ValueError(f"config: expected a mapping (dict or ConfigDict), got "
                     f"{type(config).__name__}")
  try:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=_json_default)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config: expected JSON-serializable values with finite numbers and "
                     f"string keys ({e})") from None


def config_hash(config: Mapping[str, Any]) -> str:
  """``HASH_CHARS`` (16) hex chars of the sha256 of ``canonical_json(config)``.

  Stable under key order and across processes and Python versions; ``1`` and ``1.0`` hash
  differently (they are different JSON).
  """
  return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:HASH_CHARS]


# ---------------------------------------------------------------------------- refusals


class UnusableResults(ConfigError):
  """The workdir cannot hold results as it is: the folder cannot be written, or its
  ``results.sqlite`` is not a results database, or is damaged.

  A :class:`~jaxfl.errors.ConfigError` on ``--workdir``: the remedy is the user's (another
  workdir, the file moved away or recovered), so the entry points report it as bad input,
  one line and exit code 2; the file is left exactly as it was.
  """

  def __init__(self, path: str, expected: str, why: str):
    super().__init__("--workdir", expected, path)
    self.path, self.why = path, why
    self.args = (f"{self.args[0]} ({why})",)


def unwritable(path: str, error: BaseException) -> UnusableResults:
  """The error for a workdir whose ``path`` (a folder or a file in it) cannot be written."""
  return UnusableResults(path, "a folder this process can create and write in (choose "
                         "another --workdir, or give this one write permission)",
                         _one_line(error))


def _one_line(error) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _not_results(path: str, why: str) -> UnusableResults:
  return UnusableResults(path, f"{FILENAME} to be a results database (move this file away, "
                         "or choose another --workdir; nothing was written to it)", why)


def _damaged(path: str, why: str) -> UnusableResults:
  text = why if len(why) <= 160 else why[:157] + "..."
  return UnusableResults(path, "an intact results database (restore a copy, or save what it "
                         "holds with `sqlite3 FILE .recover | sqlite3 NEW`, or choose another "
                         "--workdir; nothing was written to it)", f"SQLite found damage: {text}")


def _refusal(path: str, e: sqlite3.Error) -> UnusableResults | None:
  """What an SQLite error on opening means for the user, or None for one that is not a
  property of the file or the folder (a lock held too long...)."""
  name = getattr(e, "sqlite_errorname", "")  # the primary code, e.g. SQLITE_CORRUPT
  if name.startswith("SQLITE_NOTADB"):
    return _not_results(path, _one_line(e))
  if name.startswith("SQLITE_CORRUPT"):
    return _damaged(path, _one_line(e))
  if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
    return unwritable(path, e)
  return None
