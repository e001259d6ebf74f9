"""Reports: ``report.md`` (claims, a table per method) and PNG plots beside it.

Everything here works from values read back from the results database, so
``python -m sweeps.report --workdir DIR`` can rebuild every report without rerunning.
"""

from __future__ import annotations

import math
import os
import statistics

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _fmt(v) -> str:
  if v is None:
    return "—"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def claims_table(doc: dict) -> str:
  rows = ["| claim | method | value | baseline | baseline value | threshold / margin | holds |",
          "|---|---|---|---|---|---|---|"]
  for cl in doc["claims"]:
    limit = cl.get("threshold", cl.get("margin"))
    rows.append(f"| {cl['id']} | {cl['method']} | {_fmt(cl['value'])} | {cl.get('baseline', '—')} "
                f"| {_fmt(cl.get('baseline_value'))} | {_fmt(limit)} | "
                f"{'yes' if cl['holds'] else '**no**'} |")
  return "\n".join(rows)


def mean_std(values) -> str:
  xs = [v for v in values if v is not None and math.isfinite(v)]
  if not xs:
    return "—"
  sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
  missing = len(values) - len(xs)
  return f"{statistics.fmean(xs):.4g} ± {sd:.2g}" + (f" ({missing} missing)" if missing else "")


def method_table(per_seed: dict[str, list], metric: str) -> str:
  """A row per method: mean ± std over seeds, then each seed's value."""
  n = max(len(v) for v in per_seed.values())
  rows = [f"| method | {metric} (mean ± std) | " + " | ".join(f"seed {i}" for i in range(n)) + " |",
          "|---|---|" + "---|" * n]
  for m, vs in per_seed.items():
    rows.append(f"| {m} | {mean_std(vs)} | " + " | ".join(_fmt(v) for v in vs) + " |")
  return "\n".join(rows)


def plot_curves(path: str, curves: dict[str, dict[int, tuple]], *, ylabel: str, title: str,
                references: dict[str, list] | None = None) -> None:
  """Metric against rounds and against simulated time: a line per method, a band over seeds.

  Args:
    curves: ``{method: {seed: (steps, sim_times, values)}}``; seeds are aligned on steps
      (runs of one config evaluate at the same rounds). Against simulated time the line is
      drawn at the mean simulated time of each step over seeds.
    references: ``{method: [final values per seed]}`` drawn as horizontal mean lines with
      a band (e.g. a centralized baseline).
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for i, (method, by_seed) in enumerate(curves.items()):
    if not by_seed:
      continue
    n = min(len(v[0]) for v in by_seed.values())
    steps = np.asarray(next(iter(by_seed.values()))[0][:n], float)
    sims = np.array([[np.nan if t is None else t for t in v[1][:n]] for v in by_seed.values()],
                    float)
    ys = np.array([v[2][:n] for v in by_seed.values()], float)
    mean, lo, hi = ys.mean(0), ys.min(0), ys.max(0)
    color = f"C{i % 10}"
    label = f"{method} (mean, band: min-max over {len(by_seed)} seeds)"
    for ax, x in ((axes[0], steps), (axes[1], np.nanmean(sims, 0))):
      ax.plot(x, mean, color=color, label=label)
      ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
  for j, (method, values) in enumerate((references or {}).items()):
    xs = [v for v in values if v is not None]
    if not xs:
      continue
    color = f"C{(len(curves) + j) % 10}"
    for ax in axes:
      ax.axhline(statistics.fmean(xs), color=color, ls="--", label=f"{method} (mean)")
      ax.axhspan(min(xs), max(xs), color=color, alpha=0.12, lw=0)
  axes[0].set(xlabel="round", ylabel=ylabel, title=title)
  axes[1].set(xlabel="simulated time (s)")
  axes[0].legend(fontsize=8)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_fedavg_report(out: str, c, series: dict[int, tuple], per_seed: dict[str, list],
                        doc: dict) -> None:
  scaled = {s: (st, t, [100.0 * v for v in vs]) for s, (st, t, vs) in series.items()}
  plot_curves(os.path.join(out, "accuracy.png"), {"fedavg": scaled},
              ylabel="test accuracy (%)",
              title=f"FedAvg, {c.num_clients} clients, Dirichlet α={c.alpha}",
              references={"centralized": per_seed["centralized"]})
  sim_final = {s: t[-1] for s, (_, t, _) in series.items() if t}
  lines = [f"# fedavg ({c.variant})", "", claims_table(doc), "",
           method_table(per_seed, "test accuracy (%)"), "",
           "FedAvg simulated time to the last round (s): "
           + mean_std(list(sim_final.values())), "",
           "![accuracy](accuracy.png)", "",
           f"Data {c.dataset}, {c.num_clients} clients ({c.partition}, α={c.alpha}), "
           f"{c.clients_per_round} per round, {c.local_epochs} local epochs, batch "
           f"{c.batch_size}, client lr {c.client_lr}, server {c.server_optimizer} "
           f"(lr {c.server_lr}), {c.num_rounds} rounds; centralized {c.central_epochs} epochs.", ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))


def write_sweep_table(folder: str, points: list[tuple[dict, str, dict]]) -> str:
  """``<folder>/sweep.md``: one row per grid point and claim, linking each point's report.

  Args:
    folder: the experiment's report folder (``<workdir>/<experiment>``).
    points: ``(overrides, report folder relative to folder, claims doc)`` per point.
  """
  rows = ["| point | claim | method | value | baseline value | holds |",
          "|---|---|---|---|---|---|"]
  for point, rel, doc in points:
    label = ", ".join(f"{k}={v}" for k, v in sorted(point.items())) or "(base config)"
    for cl in doc["claims"]:
      rows.append(f"| [{label}]({rel}/report.md) | {cl['id']} | {cl['method']} | "
                  f"{_fmt(cl['value'])} | {_fmt(cl.get('baseline_value'))} | "
                  f"{'yes' if cl['holds'] else '**no**'} |")
  experiment = points[0][2]["experiment"] if points else os.path.basename(folder)
  held = sum(cl["holds"] for _, _, d in points for cl in d["claims"])
  total = sum(len(d["claims"]) for _, _, d in points)
  text = "\n".join([f"# {experiment}: sweep of {len(points)} grid points", "",
                    f"{held}/{total} claims hold.", "", *rows, ""])
  path = os.path.join(folder, "sweep.md")
  os.makedirs(folder, exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return path


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
      doc = runner.report(config, db, out, r["config_hash"])
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


def main(argv: list[str] | None = None) -> int:
  import argparse
  import sys

  parser = argparse.ArgumentParser(prog="python -m sweeps.report",
                                   description="Rebuild reports and claims from results.sqlite")
  parser.add_argument("--workdir", default="runs")
  args = parser.parse_args(argv)
  try:
    docs = rebuild(args.workdir)
  except FileNotFoundError as e:
    print(f"error: --workdir: expected a folder holding results.sqlite, got {args.workdir!r} "
          f"({e} does not exist)", file=sys.stderr)
    return 2
  for doc in docs:
    held = sum(c["holds"] for c in doc["claims"])
    print(f"{doc['experiment']}/{doc['variant']}: {held}/{len(doc['claims'])} claims hold -> "
          f"{doc['out']}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
