"""Reports: the vocabulary experiments compose them from, and rebuilding them.

An experiment's ``report(c, db, out, digest)`` reads its values back from the results
database, writes ``claims.json`` (:mod:`sweeps.claims`), and composes ``report.md`` and
its plots from the pieces here:

- text: :func:`fmt`, :func:`mean_std`, :func:`table`, :func:`claims_table`,
  :func:`method_table` (a row per method, a column per seed), :func:`metric_table` (a row
  per metric, a column per method), :func:`tuning_table` (each method's grid and the
  point chosen on the tuning seeds), :func:`image`, :func:`write_markdown`;
- plots: :func:`figure` (a context manager that saves and closes), :func:`seed_band` (a
  curve's mean over seeds with a min-max band, against steps or simulated time) and
  :func:`reference_band` (a baseline's final values as a horizontal band).

Because reports read only the database, ``python -m sweeps.report --workdir DIR`` rebuilds
every report without rerunning (:func:`rebuild`).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from sweeps import claims as claims_lib


def fmt(v, spec: str | None = None, *, missing: str = "—") -> str:
  """A value for a table: ``missing`` for None, floats to 4 significant digits (or ``spec``).

  >>> fmt(None), fmt(3.14159), fmt(2), fmt(0.5, ".0%"), fmt(None, missing="null")
  ('—', '3.142', '2', '50%', 'null')
  """
  if v is None:
    return missing
  if spec is not None:
    return format(v, spec)
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def mean_std(values) -> str:
  """``mean ± std`` over the finite values, naming how many are missing.

  >>> mean_std([1.0, 3.0, None])
  '2 ± 1.4 (1 missing)'
  """
  xs = [v for v in values if v is not None and math.isfinite(v)]
  if not xs:
    return "—"
  sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
  missing = len(values) - len(xs)
  return f"{statistics.fmean(xs):.4g} ± {sd:.2g}" + (f" ({missing} missing)" if missing else "")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  """A markdown table; cells that are not strings go through :func:`fmt`.

  >>> print(table(["method", "loss"], [["a", 0.12345], ["b", None]]))
  | method | loss |
  |---|---|
  | a | 0.1235 |
  | b | — |
  """
  cell = lambda v: v if isinstance(v, str) else fmt(v)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def claims_table(doc: dict) -> str:
  """One row per claim of a claims document (:func:`sweeps.claims.write_claims`)."""
  return table(["claim", "kind", "method", "value", "baseline", "baseline value",
                "threshold / margin", "holds"],
               [[cl["id"], cl.get("kind", "—"), cl["method"], cl["value"],
                 cl.get("baseline", "—"), cl.get("baseline_value"),
                 cl.get("threshold", cl.get("margin")), claims_lib.verdict(cl)]
                for cl in doc["claims"]])


def method_table(per_seed: Mapping[str, Sequence], metric: str) -> str:
  """A row per method: mean ± std over seeds, then each seed's value."""
  n = max(len(v) for v in per_seed.values())
  return table(["method", f"{metric} (mean ± std)", *(f"seed {i}" for i in range(n))],
               [[m, mean_std(vs), *vs] for m, vs in per_seed.items()])


def metric_table(per_seed: Mapping[str, Mapping[str, Sequence]],
                 metrics: Sequence[tuple[str, str]], methods: Sequence[str],
                 names: Mapping[str, str] | None = None) -> str:
  """A row per metric, a column per method: mean ± std over seeds.

  Args:
    per_seed: ``{metric: {method: [value per seed]}}``.
    metrics: ``(metric key, row label)`` pairs, in row order.
    names: column titles per method (default: the method's key).
  """
  names = names or {}
  return table(["metric (mean ± std over seeds)", *(names.get(m, m) for m in methods)],
               [[label, *(mean_std(per_seed[k][m]) for m in methods)] for k, label in metrics])


def tuning_table(db, experiment: str, digest: str, grids: Mapping[str, Sequence[Mapping]],
                 selection: str, names: Mapping[str, str] | None = None) -> str:
  """A row per method: its tuning grid (size and values) and the point chosen on the
  tuning seeds, read back from the reported runs' logged hyperparameters
  (:func:`sweeps.families.rows`), and how points were ranked (``selection``)."""
  names = names or {}
  keys = list(dict.fromkeys(k for grid in grids.values() for p in grid for k in p))
  logged = {k: db.final_values(experiment, k, config_hash=digest) for k in keys}  # one query each
  rows = []
  for m, grid in grids.items():
    keys = list(grid[0]) if grid else []
    chosen = []
    for k in keys:
      vals = set(logged[k].get(m, {}).values())
      chosen.append(f"{k}={fmt(vals.pop())}" if len(vals) == 1 else f"{k}=—")
    values = "; ".join(
        f"{k} ∈ {{{', '.join(dict.fromkeys(fmt(float(p[k])) for p in grid))}}}" for k in keys)
    rows.append([names.get(m, m), str(len(grid)), values or "—", ", ".join(chosen) or "—"])
  return (f"Tuning (every method the same budget; chosen by {selection}):\n\n"
          + table(["method", "grid points", "grid", "chosen"], rows))


def image(file: str) -> str:
  """The markdown that shows ``file`` (beside report.md)."""
  return f"![{os.path.splitext(file)[0]}]({file})"


def write_markdown(out: str, lines: Sequence[str], name: str = "report.md") -> str:
  """Write ``lines`` (blocks of markdown) to ``out/name``, a blank line between blocks
  (empty blocks are left out)."""
  path = os.path.join(out, name)
  with open(path, "w") as f:
    f.write("\n\n".join(b for b in lines if b).rstrip("\n") + "\n")
  return path


# ----------------------------------------------------------------------------- plots


def pyplot():
  """matplotlib's pyplot on the file-only Agg backend (imported on first use: the sweep's
  start-up does not pay for it)."""
  import matplotlib

  matplotlib.use("Agg")  # files only; no display on clusters and CI
  import matplotlib.pyplot as plt

  return plt


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, *, size=(7.0, 4.5), grid: bool = True,
           legend: bool = True, dpi: int = 110, **subplots):
  """A figure saved to ``path`` on exit: yields its axes (one, a row, or a 2-D array, as
  ``plt.subplots`` squeezes them); every axis gets a light grid and, where it has labelled
  lines, a legend."""
  plt = pyplot()
  fig, axes = plt.subplots(nrows, ncols, figsize=size, **subplots)
  try:
    yield axes
    for ax in np.ravel(axes):
      if grid:
        ax.grid(alpha=0.3)
      if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
  finally:
    plt.close(fig)


def seed_band(ax, by_seed: Mapping[int, tuple], *, x: str = "step", scale: float = 1.0,
              color=None, label: str | None = None, alpha: float = 0.2):
  """A method's curve over seeds: the mean as a line, min to max as a band.

  Args:
    by_seed: ``{seed: (steps, sim_times, values)}`` as :meth:`ResultsDB.series` returns;
      seeds are cut to the shortest and aligned on the evaluation index (runs of one config
      evaluate at the same steps).
    x: ``"step"`` or ``"time"``: against simulated time each point sits at the mean
      simulated time of that evaluation over seeds.
    scale: multiplies the values (e.g. 100 for percent).

  Returns:
    ``(x, values)``: the abscissa and the ``[seeds, evals]`` values drawn, or None when
    there are no seeds.
  """
  if x not in ("step", "time"):
    raise ValueError(f"x: expected 'step' or 'time', got {x!r}")
  if not by_seed:
    return None
  runs = list(by_seed.values())
  n = min(len(r[0]) for r in runs)
  col = 0 if x == "step" else 1
  xs = np.array([[np.nan if v is None else v for v in r[col][:n]] for r in runs], float)
  xs = np.nanmean(xs, 0) if n else np.zeros(0)
  ys = scale * np.array([r[2][:n] for r in runs], float)
  ax.plot(xs, ys.mean(0), color=color, label=label)
  ax.fill_between(xs, ys.min(0), ys.max(0), color=color, alpha=alpha, lw=0)
  return xs, ys


def reference_band(ax, values: Sequence, *, color=None, label: str | None = None,
                   alpha: float = 0.12) -> None:
  """A horizontal line at the mean of ``values`` (e.g. a baseline's final value per seed)
  and a band from their min to max."""
  xs = [v for v in values if v is not None]
  if xs:
    ax.axhline(statistics.fmean(xs), color=color, ls="--", label=label)
    ax.axhspan(min(xs), max(xs), color=color, alpha=alpha, lw=0)


# ----------------------------------------------------------------------------- rebuilding


def experiment_report(runner, config, db, out: str, digest: str) -> dict:
  """``runner.report`` (claims.json, report.md, figures from the database), then every
  claim marked incomplete (:func:`sweeps.claims.mark_incomplete`) if a reported run of the
  config is not done (a failed or interrupted run, rebuilt by ``sweeps.report``), and the
  config's ``config_hash`` and ``provenance`` (:func:`sweeps.provenance.summary`: its
  overrides, the launches that computed it, the devices) added to both files."""
  from sweeps import provenance
  from sweeps.families import seeds

  doc = runner.report(config, db, out, digest)
  runs = [r for r in db.runs(config.experiment) if r["config_hash"] == digest]
  wanted = set(seeds(config)) if "num_seeds" in config else None  # None: every seed
  missing = sorted(f"{r['method']} seed {r['seed']}" for r in runs
                   if r["status"] != "done" and (wanted is None or r["seed"] in wanted))
  doc = claims_lib.mark_incomplete(doc, missing)
  facts = provenance.summary(db.launches(config.experiment, digest), runs)
  if facts["overrides"] is None:  # recorded by no launch (an older database): as now
    facts["overrides"] = provenance.overrides(config)
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"),
                                **{"experiment": config.experiment,
                                   "variant": config.get("variant"), "seeds": [], **doc,
                                   "config_hash": digest, "provenance": facts})
  blocks = []
  if missing:
    blocks.append(f"**Incomplete**: {len(missing)} reported runs are not done "
                  f"({', '.join(missing)}); every claim above is incomplete, not false. "
                  "Relaunch the same command to finish them.")
  blocks.append(provenance_markdown(digest, facts))
  with open(os.path.join(out, "report.md"), "a") as f:
    f.write("\n" + "\n\n".join(blocks) + "\n")
  return doc


def provenance_markdown(digest: str, facts: dict) -> str:
  """The report's provenance section: the config hash and overrides, a row per launch
  (time, commit, backend, host, key versions) and the devices the runs ran on."""
  import datetime

  changed = facts["overrides"]
  said = ("none" if changed == {} else "unknown (no variant config)" if changed is None
          else ", ".join(f"`{k}={v}`" for k, v in changed.items()))
  rows = []
  for la in facts["launches"]:
    when = datetime.datetime.fromtimestamp(la["time"], datetime.UTC).strftime("%Y-%m-%d %H:%M")
    sha = la.get("commit")
    commit = "—" if sha is None else sha[:12] + (" (uncommitted changes)" if la["dirty"] else "")
    v = la["versions"]
    dev = la["devices"]
    rows.append([when + " UTC", commit, la["backend"], la["host"],
                 f"{dev['devices']} × {dev['device']}", v["jax"], v["flax"], v["optax"],
                 v["numpy"], v["python"]])
  devices = "; ".join(f"{d['devices']} × {d['device']} ({d['platform']})"
                      for d in facts["run_devices"]) or "—"
  return "\n\n".join([
      "## Provenance",
      f"Config hash `{digest}`; overrides against the variant: {said}. Runs computed on: "
      f"{devices}.",
      table(["launched", "commit", "backend", "host", "devices", "jax", "flax", "optax",
             "numpy", "python"], rows) if rows else "No launch recorded (an older database)."])


def write_sweep_table(folder: str, points: list[tuple[dict, str, dict]]) -> str:
  """``<folder>/sweep.md``: one row per grid point and claim, linking each point's report.

  Args:
    folder: the experiment's report folder (``<workdir>/<experiment>``).
    points: ``(overrides, report folder relative to folder, claims doc)`` per point.
  """
  rows = []
  for point, rel, doc in points:
    label = ", ".join(f"{k}={v}" for k, v in sorted(point.items())) or "(base config)"
    rows += [[f"[{label}]({rel}/report.md)", cl["id"], cl.get("kind", "—"), cl["method"],
              cl["value"],
              cl.get("baseline_value"), claims_lib.verdict(cl)]
             for cl in doc["claims"]]
  experiment = points[0][2]["experiment"] if points else os.path.basename(folder)
  os.makedirs(folder, exist_ok=True)
  return write_markdown(folder, [
      f"# {experiment}: sweep of {len(points)} grid points",
      f"{claims_lib.counts([d for _, _, d in points])}.",
      table(["point", "claim", "kind", "method", "value", "baseline value", "holds"], rows)],
      name="sweep.md")


def rebuild(workdir: str) -> list[dict]:
  """Rebuild every report and claims file in ``workdir`` from the database alone.

  Every report folder the launcher registered (``reports`` table) is rebuilt from the
  newest config registered to it that has finished runs, and each experiment's
  ``sweep.md`` from its grid points. Databases written before the ``reports`` table
  existed get one report per experiment, from the config of its newest finished run.
  """
  import ml_collections

  from sweeps import experiments
  from sweeps.results import ResultsDB, results_path

  path = results_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  docs = []
  with ResultsDB(path) as db:
    configs, finished = {}, set()
    for run in db.runs(status="done"):
      configs[run["config_hash"]] = run["config"]
      finished.add((run["experiment"], run["config_hash"]))
    targets: dict[str, dict] = {}  # out -> newest registration with finished runs
    for r in db.reports():
      if (r["experiment"], r["config_hash"]) in finished:
        targets[r["out"]] = r
    if not targets:  # a version-1 database: the newest finished run of each experiment
      for run in sorted(db.runs(status="done"), key=lambda r: r["start_time"]):
        targets[run["experiment"]] = {"experiment": run["experiment"], "out": run["experiment"],
                                      "config_hash": run["config_hash"], "sweep": None}
    grids: dict[str, list] = {}
    for rel, r in sorted(targets.items()):
      runner = experiments.get(r["experiment"])
      out = os.path.join(workdir, rel)
      os.makedirs(out, exist_ok=True)
      config = ml_collections.ConfigDict(configs[r["config_hash"]])
      doc = experiment_report(runner, config, db, out, r["config_hash"])
      doc["out"] = out
      docs.append(doc)
      if r["sweep"] is not None:
        grids.setdefault(r["experiment"], []).append(
            (r["sweep"], os.path.relpath(rel, r["experiment"]), config, doc))
    for experiment, points in grids.items():
      folder = os.path.join(workdir, experiment)
      write_sweep_table(folder, [(p, rel, doc) for p, rel, _, doc in points])
      runner = experiments.get(experiment)
      if hasattr(runner, "report_sweep"):
        runner.report_sweep(folder, [(p, c, doc) for p, _, c, doc in points])
  return docs


def latest_report(workdir: str, experiment: str) -> str | None:
  """The folder of the report last registered for ``experiment`` in ``workdir`` (not a
  sweep's point), or None: where the launch that just ran put its claims.json."""
  from sweeps.results import ResultsDB, results_path

  path = results_path(workdir)
  if not os.path.exists(path):
    return None
  with ResultsDB(path) as db:
    outs = [r["out"] for r in db.reports(experiment) if r["sweep"] is None]
  return os.path.join(workdir, outs[-1]) if outs else None


def main(argv: list[str] | None = None) -> int:
  import argparse
  import sys

  parser = argparse.ArgumentParser(prog="python -m sweeps.report",
                                   description="Rebuild reports and claims from results.sqlite")
  parser.add_argument("--workdir", default="runs")
  args = parser.parse_args(argv)
  from jaxfl.errors import ConfigError
  from sweeps.results import unwritable

  try:
    docs = rebuild(args.workdir)
  except FileNotFoundError as e:
    print(f"error: --workdir: expected a folder holding results.sqlite, got {args.workdir!r} "
          f"({e} does not exist)", file=sys.stderr)
    return 2
  except ConfigError as e:  # results.sqlite not a results database, damaged, or read-only
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (PermissionError, IsADirectoryError, NotADirectoryError) as e:  # writing a report
    print(f"error: {unwritable(e.filename or args.workdir, e)}", file=sys.stderr)
    return 2
  for doc in docs:
    print(f"{doc['experiment']}/{doc['variant']}: {claims_lib.counts([doc])} -> {doc['out']}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
