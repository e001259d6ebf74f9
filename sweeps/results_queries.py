"""The read side of :class:`sweeps.results.ResultsDB`: runs, metrics, series, final values.

:class:`ResultsQueries` holds the query methods; ``ResultsDB`` inherits them and provides
``_read(sql, params)``, which runs one parameterized ``SELECT`` and returns its rows as dicts.
"""

from __future__ import annotations

import json
from typing import Any

from sweeps.results_schema import _RUN_COLUMNS, STATUSES, _int, _text


class ResultsQueries:
  """The queries of :class:`~sweeps.results.ResultsDB` (a base class; needs ``_read``)."""

  def reports(self, experiment: str | None = None) -> list[dict]:
    """Registered reports, oldest first: ``{experiment, config_hash, out, sweep, registered}``
    with ``sweep`` parsed (a dict, or None)."""
    where, params = _filters(experiment=experiment)
    rows = self._read("SELECT experiment, config_hash, out, sweep, registered FROM reports"
                      f"{where} ORDER BY registered, rowid", params)
    for r in rows:
      r["sweep"] = None if r["sweep"] is None else json.loads(r["sweep"])
    return rows

  def launches(self, experiment: str, config_hash: str) -> list[dict]:
    """The facts of every launch that computed runs of ``config_hash``, oldest first."""
    rows = self._read("SELECT facts FROM launches WHERE experiment = ? AND config_hash = ? "
                      "ORDER BY time, id", (_text("experiment", experiment),
                                            _text("config_hash", config_hash)))
    return [json.loads(r["facts"]) for r in rows]

  def runs(self, experiment: str | None = None, status: str | None = None, *,
           method: str | None = None, variant: str | None = None) -> list[dict]:
    """Runs matching every given filter, by id; ``config`` is the parsed config dict."""
    where, params = _filters(experiment=experiment, status=_status(status), method=method,
                             variant=variant)
    rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs{where} ORDER BY id", params)
    for r in rows:
      r["config"] = json.loads(r.pop("config_json"))
      r["info"] = None if r["info"] is None else json.loads(r["info"])
    return rows

  def metrics(self, run_id: int | None = None, experiment: str | None = None,
              name: str | None = None) -> list[dict]:
    """Metric rows ``{run_id, step, sim_time, name, value}``, by run, step and name."""
    if run_id is not None:
      run_id = _int("run_id", run_id)
    where, params = _filters(**{"m.run_id": run_id, "r.experiment": experiment,
                                "m.name": name})
    return self._read(
        "SELECT m.run_id, m.step, m.sim_time, m.name, m.value FROM metrics m "
        f"JOIN runs r ON r.id = m.run_id{where} ORDER BY m.run_id, m.step, m.name", params)

  def snapshot(self, experiment: str | None = None) -> tuple[list[tuple], list[tuple]]:
    """What two launches of the same config must agree on, without ids or timestamps:
    every metric row ``(method, seed, step, name, sim_time, value)`` and every run
    ``(method, seed, status, config_hash)``, sorted.

    >>> from sweeps.results import ResultsDB
    >>> db = ResultsDB(":memory:")
    >>> run, _ = db.start_run("e", "quick", "m", {"seed": 0}, 0)
    >>> db.log_metrics(run, 1, 2.5, {"loss": 0.5})
    >>> db.finish_run(run)
    >>> db.snapshot()
    ([('m', 0, 1, 'loss', 2.5, 0.5)], [('m', 0, 'done', '...')])
    """
    where, params = _filters(**{"r.experiment": experiment})
    metrics = self._read(
        "SELECT r.method, r.seed, m.step, m.name, m.sim_time, m.value FROM metrics m "
        f"JOIN runs r ON r.id = m.run_id{where} ORDER BY 1, 2, 3, 4", params)
    where, params = _filters(experiment=experiment)
    runs = self._read(f"SELECT method, seed, status, config_hash FROM runs{where} "
                      "ORDER BY 1, 2", params)
    return [tuple(r.values()) for r in metrics], [tuple(r.values()) for r in runs]

  def series(self, experiment: str, method: str, name: str, *, variant: str | None = None,
             config_hash: str | None = None, status: str | None = "done"
             ) -> dict[int, tuple[list[int], list[float | None], list[float | None]]]:
    """One metric over steps, per seed: ``{seed: (steps, sim_times, values)}``.

    Lists are in step order (``np.asarray(values, float)`` turns None into NaN for
    plotting). Only runs with ``status`` (default ``"done"``; None for all) count.

    Raises:
      ValueError: when two matching runs share a seed (a hyperparameter grid or several
        variants): pass ``variant`` or ``config_hash`` to pick one.
    """
    experiment, method = _text("experiment", experiment), _text("method", method)
    name = _text("name", name)
    where, params = _filters(**{"r.experiment": experiment, "r.method": method,
                                "m.name": name, "r.variant": variant,
                                "r.config_hash": config_hash, "r.status": _status(status)})
    rows = self._read(
        "SELECT m.run_id, r.seed, m.step, m.sim_time, m.value FROM metrics m "
        f"JOIN runs r ON r.id = m.run_id{where} ORDER BY r.seed, m.run_id, m.step", params)
    out: dict[int, tuple[list, list, list]] = {}
    owner: dict[int, int] = {}
    for r in rows:
      if owner.setdefault(r["seed"], r["run_id"]) != r["run_id"]:
        raise ValueError(_ambiguous(experiment, method, r["seed"]))
      steps, sim_times, values = out.setdefault(r["seed"], ([], [], []))
      steps.append(r["step"])
      sim_times.append(r["sim_time"])
      values.append(r["value"])
    return out

  def final_values(self, experiment: str, name: str, *, variant: str | None = None,
                   config_hash: str | None = None, status: str | None = "done"
                   ) -> dict[str, dict[int, float | None]]:
    """Each run's value of a metric at its largest logged step: ``{method: {seed: value}}``.

    Only runs with ``status`` (default ``"done"``; None for all) count.

    Raises:
      ValueError: when two matching runs share a method and seed: pass ``variant`` or
        ``config_hash`` to pick one.
    """
    experiment, name = _text("experiment", experiment), _text("name", name)
    where, params = _filters(experiment=experiment, name=name, variant=variant,
                             config_hash=config_hash, status=_status(status))
    rows = self._read(f"SELECT run_id, method, seed, value FROM final_metrics{where} "
                      "ORDER BY method, seed, run_id", params)
    out: dict[str, dict[int, float | None]] = {}
    seen: set[tuple[str, int]] = set()
    for r in rows:
      if (r["method"], r["seed"]) in seen:
        raise ValueError(_ambiguous(experiment, r["method"], r["seed"]))
      seen.add((r["method"], r["seed"]))
      out.setdefault(r["method"], {})[r["seed"]] = r["value"]
    return out



def _status(status: str | None) -> str | None:
  if status is not None and status not in STATUSES:
    raise ValueError(f"status: expected one of {list(STATUSES)} or None, got {status!r}")
  return status


def _filters(**columns: Any) -> tuple[str, list[Any]]:
  """A WHERE clause over the non-None filters. Column names are code constants; values
  are always bound parameters."""
  given = [(col, v) for col, v in columns.items() if v is not None]
  if not given:
    return "", []
  return (" WHERE " + " AND ".join(f"{col} = ?" for col, _ in given),
          [v for _, v in given])


def _ambiguous(experiment: str, method: str, seed: int) -> str:
  return (f"config_hash: several {experiment!r} runs of method {method!r} have seed {seed} "
          "(different configs); pass variant= or config_hash= to pick one")
