"""The results database: schema, round trips, upserts, resume, real concurrent writers."""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from sweeps import results
from sweeps.results import ResultsDB, config_hash

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def db(tmp_path):
  with ResultsDB(results.results_path(tmp_path)) as d:
    yield d


def _raw(path) -> sqlite3.Connection:
  """A plain connection, to check what is on disk independently of ResultsDB."""
  return sqlite3.connect(path)


def test_schema_and_pragmas(db):
  con = _raw(db.path)
  tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
  assert {"runs", "metrics"} <= tables
  views = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='view'")}
  assert "final_metrics" in views
  indexes = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
  assert "metrics_by_name" in indexes
  cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
  assert cols[:13] == ["id", "experiment", "variant", "method", "config_json", "config_hash",
                       "seed", "status", "host", "pid", "start_time", "end_time", "error"]
  assert [r[1] for r in con.execute("PRAGMA table_info(metrics)")] == [
      "run_id", "step", "sim_time", "name", "value"]
  assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, on disk
  assert con.execute("PRAGMA user_version").fetchone()[0] == results.SCHEMA_VERSION
  assert db._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
  assert db._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
  with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint holds
    con.execute("INSERT INTO runs (experiment, method, config_json, config_hash, seed, status)"
                " VALUES ('e', 'm', '{}', 'h', 0, 'weird')")
  con.close()
  # Reopening an existing database keeps it as is.
  ResultsDB(db.path).close()


_V1_RUNS = (
    "CREATE TABLE runs (id INTEGER PRIMARY KEY, experiment TEXT NOT NULL, variant TEXT, "
    "method TEXT NOT NULL, config_json TEXT NOT NULL, config_hash TEXT NOT NULL, "
    "seed INTEGER NOT NULL, status TEXT NOT NULL, host TEXT, pid INTEGER, start_time REAL, "
    "end_time REAL, error TEXT, attempts INTEGER NOT NULL DEFAULT 1, "
    "UNIQUE(experiment, config_hash, method, seed))")


def test_version_1_file_is_upgraded_keeping_its_rows(tmp_path):
  path = str(tmp_path / "v1.sqlite")
  con = _raw(path)
  con.execute(_V1_RUNS)
  con.execute("INSERT INTO runs (experiment, method, config_json, config_hash, seed, status) "
              "VALUES ('fedavg', 'fedavg', '{\"a\":1}', 'h', 3, 'done')")
  con.execute("PRAGMA user_version = 1")
  con.commit()
  con.close()
  with ResultsDB(path) as db:
    (run,) = db.runs()
    assert (run["seed"], run["status"], run["config"], run["info"]) == (3, "done", {"a": 1}, None)
    db.set_info(run["id"], {"backend": "cpu"})
    assert db.runs()[0]["info"] == {"backend": "cpu"}
    assert db.reports() == [] and db.launches("fedavg", "h") == []
  con = _raw(path)
  assert con.execute("PRAGMA user_version").fetchone()[0] == results.SCHEMA_VERSION == 4
  con.close()


_V2_RUNS = _V1_RUNS.replace("status TEXT NOT NULL,", "status TEXT NOT NULL CHECK(status IN "
                            "('running', 'done', 'failed')),").replace(
    "attempts INTEGER NOT NULL DEFAULT 1, ", "attempts INTEGER NOT NULL DEFAULT 1, info TEXT, ")


def test_version_2_file_is_rebuilt_for_the_new_statuses_keeping_runs_and_metrics(tmp_path):
  """Version 3 widened the status CHECK (pending, interrupted): SQLite cannot alter one, so
  the runs table is rebuilt; ids, columns and the metrics that point at them survive."""
  path = str(tmp_path / "v2.sqlite")
  con = _raw(path)
  con.execute(_V2_RUNS)
  con.execute("CREATE TABLE metrics (run_id INTEGER NOT NULL REFERENCES runs(id), step INTEGER "
              "NOT NULL, sim_time REAL, name TEXT NOT NULL, value REAL, "
              "PRIMARY KEY(run_id, step, name))")
  con.execute("CREATE VIEW final_metrics AS SELECT run_id FROM metrics")  # v2 had one
  con.execute("INSERT INTO runs (id, experiment, method, config_json, config_hash, seed, "
              "status, attempts, info) VALUES (7, 'fedavg', 'fedavg', '{}', 'h', 3, 'failed', 2,"
              " '{\"device\":\"cpu\"}')")
  con.execute("INSERT INTO metrics VALUES (7, 10, 1.5, 'accuracy', 0.9)")
  con.execute("PRAGMA user_version = 2")
  con.commit()
  with pytest.raises(sqlite3.IntegrityError):  # what version 2 refused
    con.execute("UPDATE runs SET status = 'interrupted'")
  con.close()
  with ResultsDB(path) as db:
    (run,) = db.runs()
    assert (run["id"], run["seed"], run["status"], run["attempts"], run["info"]) == (
        7, 3, "failed", 2, {"device": "cpu"})
    assert [(m["step"], m["value"]) for m in db.metrics(7)] == [(10, 0.9)]
    db.finish_run(7, "interrupted", error="KeyboardInterrupt: ")
    assert db.runs(status="interrupted")[0]["id"] == 7
    # the final_metrics view, made again
    assert db.final_values("fedavg", "accuracy", status=None) == {"fedavg": {3: 0.9}}
    db.record_launch("fedavg", "h", {"commit": None})  # version 4's table, added
    assert db.launches("fedavg", "h") == [{"commit": None}]
  con = _raw(path)
  assert con.execute("PRAGMA user_version").fetchone()[0] == 4
  assert con.execute("PRAGMA foreign_key_check").fetchall() == []
  con.close()


def test_runs_enter_pending_and_run_from_begin_runs(db):
  run_id, before = db.start_run("fedavg", "quick", "fedavg", {"a": 1}, 0, status="pending")
  (run,) = db.runs()
  assert before is None and run["status"] == "pending" and run["start_time"] is None
  assert run["attempts"] == 0  # attempts count the starts of its computation
  db.begin_runs([run_id])
  (run,) = db.runs()
  assert run["status"] == "running" and run["start_time"] > 0 and run["pid"] == os.getpid()
  assert run["attempts"] == 1
  db.finish_run(run_id, "interrupted", error="Interrupted: stopped")
  again, before = db.start_run("fedavg", "quick", "fedavg", {"a": 1}, 0, status="pending")
  assert (again, before) == (run_id, "interrupted")  # the next launch resumes it
  assert db.runs()[0]["attempts"] == 1 and db.runs()[0]["status"] == "pending"
  db.begin_runs([run_id])
  assert db.runs()[0]["attempts"] == 2
  with pytest.raises(ValueError, match="status: expected 'pending' or 'running'"):
    db.start_run("fedavg", "quick", "fedavg", {"a": 1}, 0, status="done")
  with pytest.raises(ValueError, match="run_id: no run with id"):
    db.begin_runs([run_id + 1])


def test_info_and_reports(db):
  run_id, _ = db.start_run("bench", "quick", "all", {"k": 1}, seed=0)
  db.set_info(run_id, {"device": "cpu", "devices": 2})
  assert db.runs()[0]["info"] == {"device": "cpu", "devices": 2}
  with pytest.raises(ValueError, match="run_id"):
    db.set_info(run_id + 1, {})
  db.register_report("fedavg", "h1", "fedavg")
  db.register_report("fedavg", "h2", "fedavg/sweep/alpha=0.1", sweep={"alpha": 0.1})
  db.register_report("fedavg", "h1", "fedavg")  # again: moved to the end, not duplicated
  got = [(r["config_hash"], r["out"], r["sweep"]) for r in db.reports("fedavg")]
  assert got == [("h2", "fedavg/sweep/alpha=0.1", {"alpha": 0.1}), ("h1", "fedavg", None)]
  for bad in ("/abs", "../up", ""):
    with pytest.raises(ValueError, match="out"):
      db.register_report("fedavg", "h1", bad)


def test_newer_schema_refused(tmp_path):
  path = str(tmp_path / "r.sqlite")
  ResultsDB(path).close()
  con = _raw(path)
  con.execute(f"PRAGMA user_version = {results.SCHEMA_VERSION + 1}")
  con.close()
  with pytest.raises(results.UnusableResults,
                     match=r"^--workdir: expected a results database of schema version 4 or "
                     r"older \(update jaxfl, .*\(its schema version is 5\)$"):
    ResultsDB(path)


def test_round_trip_exact(db):
  config = {"lr": 0.1, "rounds": 3, "model": {"width": [32, 64]}, "name": "ünï"}
  run_id, before = db.start_run("fedavg", "quick", "fedavg", config, seed=7)
  assert before is None
  values = [0.1, 1 / 3, 1e-300, -2.5e300, 0.0]
  for step, v in enumerate(values):
    db.log_metrics(run_id, step, sim_time=step * 0.7, values={"acc": v, "loss": -v})
  db.log_metrics(run_id, 5, None, {"time_to_target": None})
  db.finish_run(run_id)

  [run] = db.runs()
  assert run["id"] == run_id and run["config"] == config
  assert run["config_hash"] == config_hash(config)
  assert (run["experiment"], run["variant"], run["method"], run["seed"]) == (
      "fedavg", "quick", "fedavg", 7)
  assert run["status"] == "done" and run["error"] is None
  assert run["pid"] == os.getpid() and run["host"]
  assert run["end_time"] >= run["start_time"]
  got = db.metrics(run_id, name="acc")
  assert [r["value"] for r in got] == values  # bit-exact floats
  assert [r["sim_time"] for r in got] == [s * 0.7 for s in range(5)]
  assert [r["step"] for r in db.metrics(experiment="fedavg", name="loss")] == list(range(5))
  assert db.metrics(name="time_to_target") == [
      {"run_id": run_id, "step": 5, "sim_time": None, "name": "time_to_target", "value": None}]
  assert len(db.metrics(experiment="fedavg")) == 11
  assert db.metrics(experiment="other") == []


def test_numpy_values_accepted(db):
  np = pytest.importorskip("numpy")
  run_id, _ = db.start_run("e", None, "m", {"lr": np.float32(0.5), "dims": np.arange(3)},
                           seed=np.int64(1))
  db.log_metrics(run_id, np.int32(0), np.float64(1.5), {"acc": np.float32(0.25)})
  [run] = db.runs()
  assert run["config"] == {"lr": 0.5, "dims": [0, 1, 2]} and run["seed"] == 1
  assert db.metrics(run_id)[0]["value"] == 0.25


def test_upsert_idempotent(db):
  run_id, _ = db.start_run("e", "quick", "m", {}, 0)
  db.log_metrics(run_id, 3, 1.0, {"acc": 0.5})
  db.log_metrics(run_id, 3, 2.0, {"acc": 0.75})
  assert db.metrics(run_id) == [
      {"run_id": run_id, "step": 3, "sim_time": 2.0, "name": "acc", "value": 0.75}]


def test_resumed_run_ends_with_the_same_rows(tmp_path):
  """A run killed after step 6, resumed from a checkpoint at step 4, rewrites 5-6."""
  def log(d, run_id, steps):
    d.log_metrics_many(run_id, [(s, s * 1.5, {"acc": s / 10, "loss": 1 / (s + 1)})
                                for s in steps])

  with ResultsDB(tmp_path / "a.sqlite") as a:
    run_id, _ = a.start_run("e", "quick", "m", {"x": 1}, 0)
    log(a, run_id, range(10))
    a.finish_run(run_id)
    uninterrupted = a.metrics()
  with ResultsDB(tmp_path / "b.sqlite") as b:
    run_id, _ = b.start_run("e", "quick", "m", {"x": 1}, 0)
    log(b, run_id, range(7))
  with ResultsDB(tmp_path / "b.sqlite") as b:  # relaunch, new process in real life
    again, before = b.start_run("e", "quick", "m", {"x": 1}, 0)
    assert (again, before) == (run_id, "running")
    log(b, run_id, range(5, 10))
    b.finish_run(run_id)
    assert b.metrics() == uninterrupted
    assert b.runs()[0]["attempts"] == 2


def test_start_run_resume_semantics(db):
  args = ("e", "quick", "m", {"lr": 0.1})
  run_id, before = db.start_run(*args, seed=0)
  assert before is None and db.runs()[0]["status"] == "running"
  assert db.start_run(*args, seed=0) == (run_id, "running")  # crashed while running
  db.finish_run(run_id, "failed", error="boom")
  assert db.runs(status="failed")[0]["error"] == "boom"
  assert db.start_run(*args, seed=0) == (run_id, "failed")  # retried
  [run] = db.runs()
  assert run["status"] == "running" and run["error"] is None and run["end_time"] is None
  db.finish_run(run_id)
  end = db.runs()[0]["end_time"]
  assert db.start_run(*args, seed=0) == (run_id, "done")  # skipped: left untouched
  [run] = db.runs()
  assert run["status"] == "done" and run["end_time"] == end and run["attempts"] == 3
  # Any change to the identity is a different run.
  assert db.start_run(*args, seed=1)[1] is None
  assert db.start_run("e", "quick", "m2", {"lr": 0.1}, 0)[1] is None
  assert db.start_run("e", "quick", "m", {"lr": 0.2}, 0)[1] is None
  assert db.start_run("e2", "quick", "m", {"lr": 0.1}, 0)[1] is None
  assert len(db.runs()) == 5 and len(db.runs("e", "done")) == 1
  assert [r["method"] for r in db.runs(method="m2")] == ["m2"]


def test_config_hash():
  a = {"lr": 0.1, "model": {"width": 32, "depth": 2}, "methods": ["a", "b"]}
  b = {"methods": ["a", "b"], "model": {"depth": 2, "width": 32}, "lr": 0.1}
  assert config_hash(a) == config_hash(b)
  assert len(config_hash(a)) == results.HASH_CHARS == 16
  assert all(c in "0123456789abcdef" for c in config_hash(a))
  assert config_hash(a) == "0d61af9ebd7165ef"  # stable across processes and versions
  for changed in ({**a, "lr": 0.2}, {**a, "model": {"width": 32, "depth": 3}},
                  {**a, "methods": ["b", "a"]}, {**a, "extra": None}, {**a, "lr": "0.1"}):
    assert config_hash(changed) != config_hash(a)
  assert config_hash({"x": 1}) != config_hash({"x": 1.0})
  assert config_hash({"x": (1, 2)}) == config_hash({"x": [1, 2]})


def test_config_hash_of_configdict():
  ml_collections = pytest.importorskip("ml_collections")
  cfg = ml_collections.ConfigDict({"lr": 0.1, "model": {"width": 32}})
  assert config_hash(cfg) == config_hash({"model": {"width": 32}, "lr": 0.1})


def test_parameterized_sql(db):
  evil = "x'); DROP TABLE runs; --"
  run_id, _ = db.start_run(evil, evil, evil, {evil: evil}, 0)
  db.log_metrics(run_id, 0, 0.0, {evil: 1.0, 'y"; DELETE FROM metrics; --': 2.0})
  assert [r["name"] for r in db.metrics(name=evil)] == [evil]
  [run] = db.runs(experiment=evil)
  assert run["experiment"] == run["method"] == run["variant"] == evil
  assert run["config"] == {evil: evil}
  db.finish_run(run_id)
  assert db.final_values(evil, evil) == {evil: {0: 1.0}}
  con = _raw(db.path)
  assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
      "runs", "metrics"}
  assert con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2
  con.close()


def test_series_and_final_values(db):
  for method in ("fedavg", "air_fedga"):
    for seed in (0, 1):
      run_id, _ = db.start_run("air", "quick", method, {"method": method}, seed)
      for step in range(3):
        db.log_metrics(run_id, step, 10.0 * step + seed, {"acc": step + seed / 10})
      if seed == 0:
        db.log_metrics(run_id, 0, 0.0, {"time_to_target": None})
      db.finish_run(run_id)
  unfinished, _ = db.start_run("air", "quick", "fedavg", {"method": "fedavg"}, 2)
  db.log_metrics(unfinished, 0, 0.0, {"acc": 0.0})

  series = db.series("air", "fedavg", "acc")
  assert series == {0: ([0, 1, 2], [0.0, 10.0, 20.0], [0.0, 1.0, 2.0]),
                    1: ([0, 1, 2], [1.0, 11.0, 21.0], [0.1, 1.1, 2.1])}
  assert set(db.series("air", "fedavg", "acc", status=None)) == {0, 1, 2}
  assert db.final_values("air", "acc") == {"fedavg": {0: 2.0, 1: 2.1},
                                           "air_fedga": {0: 2.0, 1: 2.1}}
  assert db.final_values("air", "time_to_target") == {"fedavg": {0: None},
                                                      "air_fedga": {0: None}}
  assert db.final_values("air", "missing") == {}

  # A second config with the same seeds makes (method, seed) ambiguous until narrowed.
  other, _ = db.start_run("air", "full", "fedavg", {"method": "fedavg", "big": True}, 0)
  db.log_metrics(other, 9, 90.0, {"acc": 9.0})
  db.finish_run(other)
  with pytest.raises(ValueError, match="config_hash"):
    db.final_values("air", "acc")
  with pytest.raises(ValueError, match="config_hash"):
    db.series("air", "fedavg", "acc")
  assert db.final_values("air", "acc", variant="full") == {"fedavg": {0: 9.0}}
  h = config_hash({"method": "fedavg"})
  assert db.series("air", "fedavg", "acc", config_hash=h)[1][2] == [0.1, 1.1, 2.1]


@pytest.mark.parametrize("call, field", [
    (lambda d, r: d.log_metrics(r, 0, 0.0, {"acc": float("nan")}), "metric 'acc'"),
    (lambda d, r: d.log_metrics(r, 0, 0.0, {"loss": float("inf")}), "metric 'loss'"),
    (lambda d, r: d.log_metrics(r, 0, 0.0, {"acc": "0.5"}), "metric 'acc'"),
    (lambda d, r: d.log_metrics(r, 0, 0.0, {"": 1.0}), "metric name"),
    (lambda d, r: d.log_metrics(r, -1, 0.0, {"acc": 1.0}), "step"),
    (lambda d, r: d.log_metrics(r, 1.5, 0.0, {"acc": 1.0}), "step"),
    (lambda d, r: d.log_metrics(r, 0, float("nan"), {"acc": 1.0}), "sim_time"),
    (lambda d, r: d.log_metrics(r, 0, 0.0, [("acc", 1.0)]), "values"),
    (lambda d, r: d.log_metrics(r + 100, 0, 0.0, {"acc": 1.0}), "run_id"),
    (lambda d, r: d.log_metrics("1", 0, 0.0, {"acc": 1.0}), "run_id"),
    (lambda d, r: d.log_metrics_many(r, [(0, 0.0)]), r"rows\[0\]"),
    (lambda d, r: d.finish_run(r, "finished"), "status"),
    (lambda d, r: d.finish_run(r + 100), "run_id"),
    (lambda d, r: d.finish_run(r, "failed", error=ValueError("x")), "error"),
    (lambda d, r: d.start_run("", "quick", "m", {}, 0), "experiment"),
    (lambda d, r: d.start_run("e", "quick", None, {}, 0), "method"),
    (lambda d, r: d.start_run("e", 3, "m", {}, 0), "variant"),
    (lambda d, r: d.start_run("e", "quick", "m", {}, "0"), "seed"),
    (lambda d, r: d.start_run("e", "quick", "m", {}, True), "seed"),
    (lambda d, r: d.start_run("e", "quick", "m", {}, 2**64), "seed"),
    (lambda d, r: d.start_run("e", "quick", "m", [1, 2], 0), "config"),
    (lambda d, r: d.start_run("e", "quick", "m", {"f": object()}, 0), "config"),
    (lambda d, r: d.start_run("e", "quick", "m", {"lr": float("nan")}, 0), "config"),
    (lambda d, r: d.runs(status="ok"), "status"),
    (lambda d, r: d.final_values("e", "acc", status="ok"), "status"),
])
def test_bad_input_names_the_field(db, call, field):
  run_id, _ = db.start_run("e", "quick", "m", {}, 0)
  db.log_metrics(run_id, 0, 0.0, {"acc": 0.5})
  before = (db.runs(), db.metrics())
  with pytest.raises(ValueError, match=field):
    call(db, run_id)
  assert (db.runs(), db.metrics()) == before  # nothing written


def test_batch_is_atomic(db):
  run_id, _ = db.start_run("e", "quick", "m", {}, 0)
  with pytest.raises(ValueError, match="metric 'b'"):
    db.log_metrics_many(run_id, [(0, 0.0, {"a": 1.0}), (1, 1.0, {"b": float("nan")})])
  assert db.metrics() == []


def test_pickle_reopens_and_fork_is_refused(db):
  run_id, _ = db.start_run("e", "quick", "m", {}, 0)
  clone = pickle.loads(pickle.dumps(db))
  assert clone.path == db.path and clone._conn is not db._conn
  clone.log_metrics(run_id, 0, 0.0, {"acc": 1.0})
  clone.close()
  assert db.metrics(run_id)[0]["value"] == 1.0
  db._pid = -1  # as if this object had crossed a fork
  with pytest.raises(RuntimeError, match="one per process"):
    db.runs()
  db._pid = os.getpid()


_WORKER = textwrap.dedent("""
  import os, sys, time
  from sweeps.results import ResultsDB
  path, worker, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
  db = ResultsDB(path)
  open(go + f".ready{worker}", "w").close()
  deadline = time.monotonic() + 60  # never outlive a test that gave up
  while not os.path.exists(go):  # start every writer at the same moment
    assert time.monotonic() < deadline, "no go signal"
    time.sleep(0.001)
  for j in range(n):
    # Own runs: a new row each.
    run_id, before = db.start_run("conc", "quick", f"w{worker}", {"j": j}, seed=j)
    assert before is None, before
    db.log_metrics(run_id, j, j * 0.5, {"a": worker * 1000 + j, "b": j / 7})
    db.finish_run(run_id)
    # Shared runs: every worker races to create/resume the same 10 rows and upserts
    # disjoint metric names into them.
    shared, _ = db.start_run("conc", "quick", "shared", {"k": j % 10}, seed=0)
    db.log_metrics(shared, j, None, {f"w{worker}": float(j)})
  db.close()
""")


def test_concurrent_writers_lose_nothing(tmp_path):
  path, go = str(tmp_path / "results.sqlite"), str(tmp_path / "go")
  workers, n = 6, 200
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, path, str(w), str(n), go],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
           for w in range(workers)]
  try:
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{go}.ready{w}") for w in range(workers)):
      if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
        break  # a worker died before the start: the returncode check below reports it
      time.sleep(0.01)
    open(go, "w").close()
    errors = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0] * workers, errors

  with ResultsDB(path) as db:
    own = [r for r in db.runs("conc") if r["method"] != "shared"]
    assert len(own) == workers * n
    assert all(r["status"] == "done" for r in own)
    assert {(r["method"], r["seed"]) for r in own} == {
        (f"w{w}", j) for w in range(workers) for j in range(n)}
    shared = db.runs("conc", method="shared")
    assert len(shared) == 10 and all(r["status"] == "running" for r in shared)
    assert sum(r["attempts"] for r in shared) == workers * n
    assert len(db.metrics()) == workers * n * 2 + workers * n
    seed_of = {r["id"]: (r["method"], r["seed"]) for r in own}
    for row in db.metrics(name="a"):
      method, seed = seed_of[row["run_id"]]
      assert row["value"] == int(method[1:]) * 1000 + seed and row["step"] == seed
      assert row["sim_time"] == seed * 0.5
    assert sorted(r["value"] for r in db.metrics(name="b")) == sorted(
        j / 7 for j in range(n) for _ in range(workers))
    for w in range(workers):
      assert sorted(r["step"] for r in db.metrics(name=f"w{w}")) == list(range(n))


# -- files that are not results databases, damaged ones, folders that cannot be written:
# one ConfigError on --workdir naming the path and what to do, the file left as it was.


def results_file(folder) -> str:
  """A real results database of 26 pages (1,500 metric rows), WAL folded into the file."""
  path = results.results_path(folder)
  with ResultsDB(path) as d:
    run_id, _ = d.start_run("fedavg", "quick", "fedavg", {"lr": 0.1}, 0)
    d.log_metrics_many(run_id, [(s, None, {f"m{i}": s * i / 7 for i in range(5)})
                                for s in range(300)])
  return path


def garble_page(path, page: int) -> None:
  """Overwrite 192 bytes of a b-tree page past its header, as a bad sector or copy would."""
  with open(path, "r+b") as f:
    f.seek(4096 * (page - 1) + 8)
    f.write(bytes(range(192)))


def snapshot(folder) -> dict:
  return {p.name: p.read_bytes() for p in folder.iterdir()}


def _not_a_database(tmp_path, how):
  folder = tmp_path / how.replace(" ", "_")
  path = results_file(folder)
  if how == "text":
    with open(path, "w") as f:
      f.write("run,loss\n0,1.5\n")
  elif how == "random bytes":
    with open(path, "wb") as f:
      f.write(os.urandom(3000))
  elif how == "truncated":
    os.truncate(path, os.path.getsize(path) // 2)
  elif how == "another program's database":
    os.remove(path)
    con = _raw(path)
    con.execute("CREATE TABLE notes (body TEXT)")
    con.commit()
    con.close()
  return folder, path


@pytest.mark.parametrize("how,why", [
    ("text", "file is not a database"), ("random bytes", "file is not a database"),
    ("truncated", "damage: database disk image is malformed"),
    ("another program's database", "an SQLite database with other tables: ['notes']")])
def test_a_file_that_is_not_a_results_database_is_refused_untouched(tmp_path, how, why):
  from jaxfl.errors import ConfigError

  folder, path = _not_a_database(tmp_path, how)
  before = snapshot(folder)
  with pytest.raises(ConfigError) as e:
    ResultsDB(path)
  assert e.value.field == "--workdir" and e.value.got == path
  assert str(e.value).startswith("--workdir: expected ") and why in str(e.value)
  assert "choose another --workdir" in str(e.value) and "\n" not in str(e.value)
  assert snapshot(folder) == before  # nothing written, no -wal/-shm left beside it


def test_a_damaged_page_is_found_when_opening(tmp_path):
  """SQLite opens such a file and answers queries; only its integrity check sees the page."""
  from jaxfl.errors import ConfigError

  path = results_file(tmp_path)
  garble_page(path, 3)
  before = snapshot(tmp_path)
  with pytest.raises(ConfigError, match=r"expected an intact results database \(restore a copy"
                     r".*SQLite found damage: On tree page 3") as e:
    ResultsDB(path)
  assert e.value.field == "--workdir" and e.value.got == path
  assert snapshot(tmp_path) == before


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
  """A workdir under a regular file: refused even to root, which chmod does not stop."""
  from jaxfl.errors import ConfigError

  (tmp_path / "notes.txt").write_text("a file, not a folder")
  path = results.results_path(tmp_path / "notes.txt" / "runs")
  with pytest.raises(ConfigError, match=r"^--workdir: expected a folder this process can create"
                     r" and write in \(.*\), got '.*notes.txt/runs/results.sqlite' \(.*Not a dir"):
    ResultsDB(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; the "
                    "test above covers a folder that cannot be written for root too")
def test_a_read_only_folder_is_named(tmp_path):
  from jaxfl.errors import ConfigError

  folder = tmp_path / "ro"
  folder.mkdir()
  folder.chmod(0o555)
  try:
    with pytest.raises(ConfigError, match="expected a folder this process can create and write"):
      ResultsDB(results.results_path(folder))
    assert list(folder.iterdir()) == []
  finally:
    folder.chmod(0o755)
