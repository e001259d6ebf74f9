"""The results database: ``<workdir>/results.sqlite`` (DESIGN.md contract 7).

One SQLite file holds every run of every experiment launched into a workdir and every
metric those runs logged::

  runs(id, experiment, variant, method, config_json, config_hash, seed, status, host, pid,
       start_time, end_time, error, attempts, info)
    UNIQUE(experiment, config_hash, method, seed);
    status in ('pending', 'running', 'done', 'failed', 'interrupted');
    info: JSON of facts a run reports that are not metrics (backend, device, versions)
  metrics(run_id -> runs.id, step, sim_time, name, value)
    PRIMARY KEY(run_id, step, name); index metrics_by_name(name, run_id, step)
  reports(experiment, config_hash, out, sweep, registered)
    PRIMARY KEY(experiment, config_hash, out): where a config's report goes (``out``,
    relative to the workdir) and the sweep grid point it belongs to (``sweep``: JSON of
    the point's overrides, or NULL), so ``python -m sweeps.report`` rebuilds every report
  launches(id, experiment, config_hash, time, facts)
    one row per launch that computed runs of a config: ``facts`` is JSON of its overrides,
    git commit, package versions, devices and backend (:mod:`sweeps.provenance`)
  final_metrics  (view) each run's row at its largest step, per metric name

``PRAGMA user_version`` holds ``SCHEMA_VERSION``; an older file (version 1: no ``info``, no
``reports``; version 2: no ``pending`` or ``interrupted`` status; version 3: no
``launches``) is upgraded in place when
opened.

Semantics a user relies on:

* A run is identified by (experiment, config_hash, method, seed). ``start_run`` on an
  existing identity returns the same id: a ``done`` run is reported so the caller skips it;
  a ``pending``, ``running`` (crashed, or live in another process: the caller decides from
  ``status_before``), ``failed`` or ``interrupted`` run is entered again and resumed. A
  launch enters its runs as ``pending`` and marks each ``running`` when its computation
  starts (``begin_runs``), so the table tells the runs under way from those waiting.
* Metric writes are upserts on (run_id, step, name): a run resumed from a checkpoint that
  logs some steps again ends with exactly the rows of an uninterrupted run.
* Metric values are finite floats, or ``None`` (stored NULL) for "no value", e.g. a
  target that was never reached. NaN and inf are rejected with ``ValueError`` naming the
  metric: a diverging run stops before logging (DESIGN.md, Errors) and a NaN in the table
  would silently poison means and medians.
* ``sim_time`` is the simulated clock (contract 5), or ``None`` for experiments without one;
  ``start_time``/``end_time`` are real wall-clock epoch seconds.

Concurrency: WAL journal, a 30 s busy timeout, every write in one short ``BEGIN IMMEDIATE``
transaction (so writers queue on the lock instead of failing on a stale read snapshot), and
one connection per process. Any number of processes on one host may write at once without
losing rows. WAL needs shared memory, so all writers must be on the same host as the file
(not over NFS): multi-host backends should send results back to one writer. With
``synchronous=NORMAL`` a committed write survives a killed process (SIGKILL); only an OS
crash or power loss can drop the last commits.

All SQL is parameterized; no value is ever formatted into a statement.

The schema and input checks live in :mod:`sweeps.results_schema`, the queries in
:mod:`sweeps.results_queries`; this module holds the connection and the writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self

from sweeps.results_queries import ResultsQueries
from sweeps.results_schema import (
    _SCHEMA,
    _UPGRADES,
    FILENAME,
    FINISHED,
    HASH_CHARS,
    SCHEMA_VERSION,
    STATUSES,
    UnusableResults,
    _damaged,
    _float,
    _int,
    _not_results,
    _one_line,
    _refusal,
    _text,
    canonical_json,
    config_hash,
    unwritable,
)

__all__ = ["BUSY_TIMEOUT_S", "FILENAME", "FINISHED", "HASH_CHARS", "SCHEMA_VERSION", "STATUSES",
           "ResultsDB", "UnusableResults", "canonical_json", "config_hash", "results_path",
           "unwritable"]

BUSY_TIMEOUT_S = 30.0


def results_path(workdir: str | os.PathLike) -> str:
  """The database path inside a launcher workdir."""
  return os.path.join(os.fspath(workdir), FILENAME)


# ---------------------------------------------------------------------------- database


class ResultsDB(ResultsQueries):
  """A connection to a results database; one per process.

  Usable as a context manager (closes on exit). Pickling carries only the path, so an
  instance sent to another process (Ray, submitit, multiprocessing) reopens its own
  connection there. Using an instance after ``fork`` raises, since SQLite connections
  must not cross a fork. The queries (``runs``, ``metrics``, ``series``, ...) are
  :class:`~sweeps.results_queries.ResultsQueries`' methods.

  Opening checks the file before writing anything to it: SQLite's ``quick_check`` (it reads
  the whole file once: measured 0.3 s for 155 MB, 2 million metric rows), and that a file
  without this schema has no tables of its own. A folder that cannot be written, a file that
  is not a results database and a damaged one raise :class:`UnusableResults`, naming the
  path and what to do.

  Args:
    path: the database file (created with its parent directories if missing); see
      ``results_path(workdir)``.
    timeout: seconds a writer waits for the lock held by other processes.
  """

  def __init__(self, path: str | os.PathLike, timeout: float = BUSY_TIMEOUT_S):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
      raise ValueError(f"path: expected a file path, got {path!r}")
    self.path = os.fspath(path)
    self.timeout = float(timeout)
    parent = os.path.dirname(os.path.abspath(self.path))
    try:
      os.makedirs(parent, exist_ok=True)
    except OSError as e:  # a read-only folder, a file in the way
      raise unwritable(self.path, e) from None
    if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
      # SQLite would open it read-only, and the first write would fail mid-run.
      raise unwritable(self.path, PermissionError(f"{self.path} is read-only"))
    self._pid = os.getpid()
    try:
      # isolation_level=None: no implicit transactions; every write opens its own
      # BEGIN IMMEDIATE below, so transactions stay short and explicit.
      self._conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
    except sqlite3.Error as e:
      raise (_refusal(self.path, e) or e) from None
    try:
      self._setup()
    except sqlite3.Error as e:
      self._conn.close()
      refusal = _refusal(self.path, e)
      if refusal is None:
        raise
      raise refusal from None
    except BaseException:
      self._conn.close()
      raise

  def _check_file(self) -> None:
    """Refuse a damaged file, or a database of another program's: before anything is
    written to it."""
    c = self._conn
    problems = [row[0] for row in c.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
      text = "; ".join(problems).replace("*** in database main ***", "")
      raise _damaged(self.path, _one_line(text))
    version = c.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:  # no schema of ours yet: a new (or empty) file, or someone else's
      tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                        "ORDER BY name LIMIT 4")]
      # Another opener may have created the schema between the two reads: ours, then.
      if tables and c.execute("PRAGMA user_version").fetchone()[0] == 0:
        raise _not_results(self.path, f"an SQLite database with other tables: {tables}")

  def _setup(self) -> None:
    c = self._conn
    c.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")  # an int literal, not data
    c.execute("PRAGMA foreign_keys = ON")
    self._check_file()
    # Switching to WAL takes an exclusive lock; under a crowd of first openers it can be
    # refused without the busy handler, so retry until the timeout.
    deadline = time.monotonic() + self.timeout
    while True:
      try:
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        break
      except sqlite3.OperationalError as e:
        if "locked" not in str(e) or time.monotonic() > deadline:
          raise
        time.sleep(0.01)
    if mode.lower() != "wal" and self.path != ":memory:":
      raise UnusableResults(self.path, "a workdir on a local disk (choose another --workdir)",
                            f"the file system refused SQLite's WAL mode, got {mode!r}")
    c.execute("PRAGMA synchronous = NORMAL")  # durable against a killed process in WAL
    version = c.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
      return
    if version > SCHEMA_VERSION:
      raise UnusableResults(self.path, f"a results database of schema version "
                            f"{SCHEMA_VERSION} or older (update jaxfl, or choose another "
                            "--workdir)", f"its schema version is {version}")
    # An upgrade may rebuild a table that others point at (SQLite's procedure for a changed
    # constraint): foreign keys off meanwhile (a no-op inside a transaction), checked after.
    c.execute("PRAGMA foreign_keys = OFF")
    with self._write() as c:
      # Re-read under the write lock: another process may have created it meanwhile.
      found = c.execute("PRAGMA user_version").fetchone()[0]
      if found < SCHEMA_VERSION:
        for v in range(found, SCHEMA_VERSION) if found else ():  # an older file: upgrade it
          for statement in _UPGRADES.get(v, ()):
            c.execute(statement)
        for statement in _SCHEMA.split(";"):
          if statement.strip():
            c.execute(statement)
        if c.execute("PRAGMA foreign_key_check").fetchone() is not None:
          raise _damaged(self.path, "metrics of runs that are not in the runs table")
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # a constant, not data
    c.execute("PRAGMA foreign_keys = ON")

  # -- plumbing

  def _check_process(self) -> sqlite3.Connection:
    if self._conn is None:
      raise RuntimeError(f"{self.path}: the ResultsDB is closed")
    if os.getpid() != self._pid:
      raise RuntimeError(f"{self.path}: a ResultsDB opened in process {self._pid} was used in "
                         f"process {os.getpid()}; open one per process")
    return self._conn

  @contextlib.contextmanager
  def _write(self) -> Iterator[sqlite3.Connection]:
    """One write transaction: commits on success, rolls back on any exception."""
    conn = self._check_process()
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout), so a
    # read-then-write transaction never fails on a snapshot another writer made stale.
    conn.execute("BEGIN IMMEDIATE")
    try:
      yield conn
    except BaseException:
      if conn.in_transaction:  # SQLite may have rolled back already (e.g. on I/O errors)
        conn.execute("ROLLBACK")
      raise
    conn.execute("COMMIT")

  def _read(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
    conn = self._check_process()
    cur = conn.execute(sql, tuple(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]

  def close(self) -> None:
    """Closes the connection (idempotent)."""
    if self._conn is not None and os.getpid() == self._pid:
      self._conn.close()
    self._conn = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getstate__(self) -> dict:
    return {"path": self.path, "timeout": self.timeout}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["path"], state["timeout"])

  def __repr__(self) -> str:
    return f"ResultsDB({self.path!r})"

  # -- writes

  def start_run(self, experiment: str, variant: str | None, method: str,
                config: Mapping[str, Any], seed: int, *, status: str = "running"
                ) -> tuple[int, str | None]:
    """Creates a run, or resumes it if it exists and is not done.

    Args:
      experiment: experiment name (e.g. ``"fedavg"``).
      variant: config variant (``"quick"``, ``"full"``) or None.
      method: the method this run trains (e.g. ``"fedavg"``, ``"air_fedga"``).
      config: the run's full config (dict or ConfigDict); stored as canonical JSON and
        hashed into the run's identity.
      seed: the run's seed.
      status: ``"running"`` (starting now: host, pid and start time are stamped) or
        ``"pending"`` (entered for later: :meth:`begin_runs` starts it).

    Returns:
      ``(run_id, status_before)``: ``status_before`` is None for a new run (now
      ``status``); any other status for an existing run, now ``status`` again with this
      host and pid (a ``"running"`` run may be a crashed one or one live in another
      process); ``"done"`` for a finished run, left untouched so the caller can skip it.
    """
    if status not in ("pending", "running"):
      raise ValueError(f"status: expected 'pending' or 'running', got {status!r}")
    experiment = _text("experiment", experiment)
    variant = _text("variant", variant, optional=True)
    method = _text("method", method)
    seed = _int("seed", seed)
    config_json = canonical_json(config)
    digest = hashlib.sha256(config_json.encode()).hexdigest()[:HASH_CHARS]
    host, pid = socket.gethostname(), os.getpid()
    now = time.time() if status == "running" else None
    with self._write() as c:
      row = c.execute(
          "SELECT id, status FROM runs WHERE experiment = ? AND config_hash = ? "
          "AND method = ? AND seed = ?", (experiment, digest, method, seed)).fetchone()
      if row is None:
        cur = c.execute(
            "INSERT INTO runs (experiment, variant, method, config_json, config_hash, seed, "
            "status, host, pid, start_time, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (experiment, variant, method, config_json, digest, seed, status, host, pid, now,
             int(status == "running")))
        return cur.lastrowid, None
      run_id, before = row
      if before != "done":
        c.execute(
            "UPDATE runs SET status = ?, host = ?, pid = ?, start_time = ?, end_time = NULL, "
            "error = NULL, attempts = attempts + ? WHERE id = ?",
            (status, host, pid, now, int(status == "running"), run_id))
      return run_id, before

  def begin_runs(self, run_ids: Iterable[int]) -> None:
    """Marks runs ``running`` now, from this host and process (their computation starts;
    ``attempts`` counts these starts)."""
    ids = [_int("run_id", r) for r in run_ids]
    host, pid, now = socket.gethostname(), os.getpid(), time.time()
    with self._write() as c:
      for run_id in ids:
        cur = c.execute("UPDATE runs SET status = 'running', host = ?, pid = ?, "
                        "start_time = ?, attempts = attempts + 1 WHERE id = ?",
                        (host, pid, now, run_id))
        if cur.rowcount == 0:
          raise ValueError(f"run_id: no run with id {run_id}")

  def log_metrics(self, run_id: int, step: int, sim_time: float | None,
                  values: Mapping[str, float | None]) -> None:
    """Upserts one step's metrics in one transaction.

    Args:
      run_id: from ``start_run``.
      step: round/step index, >= 0.
      sim_time: simulated time at this step, or None.
      values: ``{name: value}``, each value a finite number or None.

    Raises:
      ValueError: naming the field or metric on bad input (nothing is written).
    """
    self.log_metrics_many(run_id, [(step, sim_time, values)])

  def log_metrics_many(self, run_id: int,
                       rows: Iterable[tuple[int, float | None, Mapping[str, float | None]]]
                       ) -> None:
    """Upserts many steps' metrics in one transaction.

    Args:
      run_id: from ``start_run``.
      rows: ``(step, sim_time, {name: value})`` tuples, as in ``log_metrics``.

    Raises:
      ValueError: naming the field or metric on bad input (nothing is written).
    """
    run_id = _int("run_id", run_id)
    params = []
    for i, row in enumerate(rows):
      try:
        step, sim_time, values = row
      except (TypeError, ValueError):
        raise ValueError(f"rows[{i}]: expected (step, sim_time, {{name: value}}), "
                         f"got {row!r}") from None
      step = _int("step", step, minimum=0)
      sim_time = _float("sim_time", sim_time)
      if not isinstance(values, Mapping):
        raise ValueError(f"values: expected a mapping of metric name to value, got "
                         f"{type(values).__name__}")
      for name, value in values.items():
        name = _text("metric name", name)
        params.append((run_id, step, sim_time, name, _float(f"metric {name!r}", value)))
    if not params:
      return
    with self._write() as c:
      if c.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
        raise ValueError(f"run_id: no run with id {run_id}")
      c.executemany(
          "INSERT INTO metrics (run_id, step, sim_time, name, value) VALUES (?, ?, ?, ?, ?) "
          "ON CONFLICT(run_id, step, name) DO UPDATE SET "
          "sim_time = excluded.sim_time, value = excluded.value", params)

  def finish_run(self, run_id: int, status: str = "done", error: str | None = None) -> None:
    """Marks a run ``done``, ``failed`` or ``interrupted`` (with an error message) and
    stamps its end time."""
    run_id = _int("run_id", run_id)
    if status not in FINISHED:
      raise ValueError(f"status: expected one of {list(FINISHED)}, got {status!r}")
    if error is not None and not isinstance(error, str):
      raise ValueError(f"error: expected a string or None, got {type(error).__name__}")
    with self._write() as c:
      cur = c.execute("UPDATE runs SET status = ?, end_time = ?, error = ? WHERE id = ?",
                      (status, time.time(), error, run_id))
      if cur.rowcount == 0:
        raise ValueError(f"run_id: no run with id {run_id}")

  def set_info(self, run_id: int, info: Mapping[str, Any]) -> None:
    """Stores a run's non-metric facts (a JSON object: backend, device, versions...)."""
    run_id = _int("run_id", run_id)
    if not isinstance(info, Mapping):
      raise ValueError(f"info: expected a mapping, got {type(info).__name__}")
    text = canonical_json(info)
    with self._write() as c:
      if c.execute("UPDATE runs SET info = ? WHERE id = ?", (text, run_id)).rowcount == 0:
        raise ValueError(f"run_id: no run with id {run_id}")

  def register_report(self, experiment: str, config_hash: str, out: str,
                      sweep: Mapping[str, Any] | None = None) -> None:
    """Records that ``config_hash``'s report goes to ``out`` (a path relative to the workdir).

    Args:
      sweep: the grid point's overrides when the config is one point of a sweep.
    """
    experiment, config_hash = _text("experiment", experiment), _text("config_hash", config_hash)
    out = _text("out", out)
    if os.path.isabs(out) or ".." in out.split(os.sep):
      raise ValueError(f"out: expected a path inside the workdir, got {out!r}")
    point = None if sweep is None else canonical_json(sweep)
    with self._write() as c:
      c.execute("INSERT INTO reports (experiment, config_hash, out, sweep, registered) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(experiment, config_hash, out) DO UPDATE "
                "SET sweep = excluded.sweep, registered = excluded.registered",
                (experiment, config_hash, out, point, time.time()))

  def record_launch(self, experiment: str, config_hash: str, facts: Mapping[str, Any]) -> None:
    """Records a launch that computes runs of ``config_hash``: ``facts`` (a JSON object,
    :func:`sweeps.provenance.launch_facts`), read back by ``launches``."""
    experiment, config_hash = _text("experiment", experiment), _text("config_hash", config_hash)
    if not isinstance(facts, Mapping):
      raise ValueError(f"facts: expected a mapping, got {type(facts).__name__}")
    with self._write() as c:
      c.execute("INSERT INTO launches (experiment, config_hash, time, facts) VALUES (?, ?, ?, ?)",
                (experiment, config_hash, time.time(), canonical_json(facts)))
