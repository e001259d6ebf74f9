"""CoCoDC's report: claims.json, report.md, curves.png and gap.png from the database alone.

The protocol is the config's (``sweeps/configs/cocodc.py``): each method's point is the one
its tuning runs ranked first (:func:`chosen_points`, recomputed here from the tuning runs
and checked against the reported runs' logged hyperparameters); a baseline's target is its
tuning runs' median validation loss at ``target_step`` (:func:`targets`); times to a target
are held for ``target_window`` points of a common grid (:mod:`.targets`): the methods'
common evaluation steps for the step claim, one interpolated grid of simulated times for
the time claim. First passages (window 0) are reported beside them.
"""

from __future__ import annotations

import os
import statistics

import numpy as np

from jaxfl.data import corpus as corpus_lib
from sweeps import claims as claims_lib
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.experiments.cocodc.run import (
    FAMILIES,
    HPARAMS,
    KNOB,
    NAMES,
    PAPER,
    family_of,
    fragment_comm_seconds,
    grid,
    method_name,
    overlaps,
    reported_methods,
)
from sweeps.experiments.cocodc.targets import common_time_grid, held, on_grid, target_loss
from sweeps.families import seeds, tuning_seeds

SELECTION = "the lowest mean final validation loss over the tuning seeds"


def chosen_points(c, final) -> dict[str, dict[str, float]]:
  """Each reported method's grid point, from its tuning runs' finals alone (the rule of
  :func:`sweeps.families.choose` with :func:`sweeps.families.lowest`: ties go to the
  earlier point, a diverged point ranks last)."""
  select = families_lib.lowest("eval_loss")
  out = {}
  for m in reported_methods(c):
    points = grid(c, family_of(m))
    keys = []
    for p in points:
      name = families_lib.point_name(m, p)
      runs = []
      for s in tuning_seeds(c):
        got = {k: final[k].get(name, {}).get(s) for k in ("eval_loss", "diverged")}
        runs.append({k: v for k, v in got.items() if v is not None})
      keys.append(select(runs))
    out[m] = points[min(range(len(points)), key=lambda j: (keys[j], j))]
  return out


def targets(c, db, digest, chosen) -> dict[str, float | None]:
  """``{baseline: target}`` for DiLoCo and Streaming DiLoCo at each ``τ``: the median
  validation loss of its chosen point's tuning runs after ``target_step`` steps."""
  out = {}
  for m in ["diloco", *(method_name("streaming", t) for t in c.overlaps)]:
    name = families_lib.point_name(m, chosen[m])
    out[m] = target_loss(db.series(c.experiment, name, "eval_loss", config_hash=digest),
                         int(c.target_step))
  return out


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and the plots, from the database alone."""
  methods = reported_methods(c)
  series = {m: db.series(c.experiment, m, "eval_loss", config_hash=digest) for m in methods}
  final = {n: db.final_values(c.experiment, n, config_hash=digest)
           for n in ("eval_loss", "diverged", *HPARAMS)}
  chosen = chosen_points(c, final)
  target = targets(c, db, digest, chosen)
  w = int(c.target_window)

  def curve(m, s):
    return series[m].get(s, ([], [], []))

  def per_seed_final(m):
    return [final["eval_loss"].get(m, {}).get(s) for s in seeds(c)]

  # Steps to Streaming DiLoCo's target: both evaluate at the same steps.
  steps_to, reduction = {}, {}
  for t in c.overlaps:
    base = method_name("streaming", t)
    for m in (base, method_name("cocodc", t)):
      for win in (w, 0):
        steps_to[(m, win)] = [held(curve(m, s)[0], curve(m, s)[2], target[base], win)
                              for s in seeds(c)]
    for win in (w, 0):
      reduction[(t, win)] = [None if a is None or not b else 1.0 - a / b for a, b in zip(
          steps_to[(method_name("cocodc", t), win)], steps_to[(base, win)], strict=True)]
  # Time to DiLoCo's target: every curve on one grid of simulated times.
  ends = [v[1][-1] for m in methods for v in series[m].values() if v[1] and v[1][-1]]
  times = common_time_grid(max(ends, default=0.0), c.eval_every * c.step_time)
  time_to = {(m, win): [held(times, on_grid(times, curve(m, s)[1], curve(m, s)[2]),
                             target["diloco"], win) for s in seeds(c)]
             for m in methods for win in (w, 0)}

  long_tau = max(int(t) for t in c.overlaps)
  s_long, c_long = method_name("streaming", long_tau), method_name("cocodc", long_tau)
  hold = (f"held for {w} more evaluations; target: its median validation loss over the "
          f"tuning seeds after {c.target_step} steps")
  claims = [
      claims_lib.claim(
          id="steps_to_target_vs_streaming_long_tau", kind="reproduction",
          statement=(f"At the long overlap τ = {long_tau}, CoCoDC reaches Streaming DiLoCo's "
                     f"target loss ({hold}) in at least {c.min_step_reduction:.0%} fewer "
                     "steps than Streaming DiLoCo (mean over seeds)"),
          paper=PAPER, metric="step_reduction_vs_streaming", better="higher",
          method="cocodc", threshold=c.min_step_reduction, aggregate="mean",
          per_seed={"cocodc": reduction[(long_tau, w)]}, target=target[s_long],
          steps_cocodc=steps_to[(c_long, w)], steps_streaming=steps_to[(s_long, w)],
          first_passage=dict(reduction=reduction[(long_tau, 0)],
                             steps_cocodc=steps_to[(c_long, 0)],
                             steps_streaming=steps_to[(s_long, 0)]),
          paper_reduction=0.21),
      claims_lib.claim(
          id="final_loss_vs_streaming_long_tau", kind="reproduction",
          statement=(f"At the long overlap τ = {long_tau}, CoCoDC's final test loss is no "
                     "higher than Streaming DiLoCo's (mean over seeds)"),
          paper=PAPER, metric="final_eval_loss", better="lower", method="cocodc",
          baseline="streaming", aggregate="mean",
          per_seed={"cocodc": per_seed_final(c_long), "streaming": per_seed_final(s_long)}),
      claims_lib.claim(
          id="time_to_target_vs_diloco", kind="reproduction",
          statement=(f"CoCoDC (τ = {long_tau}) reaches blocking DiLoCo's target loss ({hold}) "
                     "in less simulated wall-clock time than DiLoCo (mean over seeds)"),
          paper=("CoCoDC overlaps communication with computation, so it beats blocking DiLoCo "
                 "in wall-clock time (arXiv 2504.17672)"),
          metric="sim_time_to_diloco_target", better="lower", method="cocodc",
          baseline="diloco", aggregate="mean", strict=True,
          per_seed={"cocodc": time_to[(c_long, w)], "diloco": time_to[("diloco", w)]},
          target=target["diloco"],
          first_passage={"cocodc": time_to[(c_long, 0)], "diloco": time_to[("diloco", 0)]}),
  ]
  logged = {m: {k: _one(final[k].get(m, {})) for k in HPARAMS} for m in methods}
  tuning = _tuning_table(c, final)
  doc = claims_lib.write_claims(
      os.path.join(out, "claims.json"), experiment=c.experiment, variant=c.variant,
      seeds=seeds(c), claims=claims,
      reported=dict(final_eval_loss={m: per_seed_final(m) for m in methods},
                    targets=target, target_step=int(c.target_step), target_window=w,
                    steps_to_streaming_target={m: {"held": steps_to[(m, w)],
                                                   "first_passage": steps_to[(m, 0)]}
                                               for m in methods if m != "diloco"},
                    step_reduction={str(t): {"held": reduction[(t, w)],
                                             "first_passage": reduction[(t, 0)]}
                                    for t in c.overlaps},
                    time_to_diloco_target={m: {"held": time_to[(m, w)],
                                               "first_passage": time_to[(m, 0)]}
                                           for m in methods},
                    time_grid=dict(spacing=float(c.eval_every * c.step_time),
                                   end=float(times[-1]), points=int(times.size)),
                    tuned=logged, chosen_on_tuning_runs=chosen,
                    fixed=dict(alpha=float(c.alpha), lam0=float(c.lam0)),
                    tuning_val_loss=tuning))
  write_report(out, c, db, digest, doc, series, per_seed_final, tuning, steps_to, reduction,
               time_to)
  return doc


def _one(by_seed):
  """The value every reported seed logged (None if they differ or none did)."""
  vals = set(by_seed.values())
  return vals.pop() if len(vals) == 1 else None


def _tuning_table(c, final) -> dict[str, float | None]:
  """``{grid run method: mean final validation loss over the tuning seeds}``."""
  out = {}
  for f in FAMILIES:
    for t in overlaps(c, f):
      for point in grid(c, f):
        m = families_lib.point_name(method_name(f, t), point)
        vals = [final["eval_loss"].get(m, {}).get(s) for s in tuning_seeds(c)]
        out[m] = claims_lib.mean(vals, "lower")
  return out


def _points(c) -> list[tuple[str, dict]]:
  return [(", ".join(f"{k} {v:g}" for k, v in p.items()), p) for p in grid(c, "diloco")]


def write_report(out, c, db, digest, doc, series, per_seed_final, tuning, steps_to, reduction,
                 time_to) -> None:
  rep = doc["reported"]
  target, w = rep["targets"], rep["target_window"]
  taus = [int(t) for t in c.overlaps]
  with report_lib.figure(os.path.join(out, "curves.png"), 2, len(taus),
                         size=(5.5 * len(taus), 8), squeeze=False) as axes:
    for j, t in enumerate(taus):
      for row, x in enumerate(("step", "time")):
        ax, lows = axes[row, j], []
        for i, m in enumerate(("diloco", method_name("streaming", t), method_name("cocodc", t))):
          drawn = report_lib.seed_band(ax, series[m], x=x, color=f"C{i}",
                                       label=NAMES[family_of(m)], alpha=0.15)
          if drawn is not None and drawn[1].size:
            lows.append(np.nanmin(drawn[1].mean(0)))
        goal = target["diloco"] if x == "time" else target[method_name("streaming", t)]
        if goal is not None:
          ax.axhline(goal, color="k", ls=":", lw=1,
                     label=("DiLoCo's" if x == "time" else "Streaming's") + " target")
        ax.set(xlabel="simulated time (s)" if x == "time" else "inner step",
               ylabel="test loss (nats/byte)", title=f"τ = {t}")
        if lows:  # the early steps' loss dwarfs the differences: zoom on the end
          ax.set_ylim(min(lows) - 0.05, min(lows) + 1.0)

  gap = {t: [None if a is None or b is None else a - b for a, b in zip(
      per_seed_final(method_name("cocodc", t)), per_seed_final(method_name("streaming", t)),
      strict=True)] for t in taus}
  points = _points(c)
  with report_lib.figure(os.path.join(out, "gap.png"), 1, 2, size=(11, 4)) as (ax1, ax2):
    means = [claims_lib.mean(gap[t], "lower") for t in taus]
    sds = [statistics.stdev([v for v in gap[t] if v is not None])
           if sum(v is not None for v in gap[t]) > 1 else 0.0 for t in taus]
    ax1.errorbar(taus, [np.nan if m is None else m for m in means], yerr=sds, marker="o",
                 capsize=3)
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set(xlabel="overlap τ (steps)", ylabel="final test loss: CoCoDC − Streaming",
            title="reported seeds (mean ± std)")
    for j, t in enumerate(taus):
      ax2.plot(range(len(points)), [np.nan if g is None else g for g in _grid_gaps(c, tuning, t)],
               marker="o", color=f"C{j}", label=f"τ = {t}")
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xticks(range(len(points)), [label for label, _ in points], fontsize=7)
    ax2.set(ylabel="final val loss: CoCoDC − Streaming", title="tuning seeds, per grid point")

  fmt, mean_std = report_lib.fmt, report_lib.mean_std
  full_s, frag_s = fragment_comm_seconds(c)
  methods = reported_methods(c)
  rows = []
  for m in methods:
    f = family_of(m)
    knob = "—" if f == "diloco" else f"{KNOB[f]} {c[KNOB[f]]:g}"
    ends = [v[1][-1] for v in series[m].values() if v[1]]
    rows.append([m, fmt(rep["tuned"][m]["inner_lr"]), fmt(rep["tuned"][m]["outer_lr"]), knob,
                 mean_std(per_seed_final(m)), statistics.fmean(ends) if ends else None])
  seed_cols = [f"seed {s}" for s in seeds(c)]
  step_rows = []
  for t in taus:
    for m in (method_name("streaming", t), method_name("cocodc", t)):
      step_rows.append([str(t), m, mean_std(steps_to[(m, w)]), mean_std(steps_to[(m, 0)]),
                        *steps_to[(m, w)]])
    step_rows.append([str(t), "reduction (CoCoDC)", mean_std(reduction[(t, w)]),
                      mean_std(reduction[(t, 0)]), *reduction[(t, w)]])
  time_rows = [[m, mean_std(time_to[(m, w)]), mean_std(time_to[(m, 0)]), *time_to[(m, w)]]
               for m in methods]
  grid_rows = [[NAMES[f], "—" if f == "diloco" else str(t),
                *(fmt(tuning.get(families_lib.point_name(method_name(f, t), p)))
                  for _, p in points)]
               for f in FAMILIES for t in overlaps(c, f)]
  mismatch = [m for m in methods if rep["tuned"][m] != rep["chosen_on_tuning_runs"][m]]
  domains = [s.domain for s in corpus_lib.client_domains(c.num_workers)]
  spacing, end = rep["time_grid"]["spacing"], rep["time_grid"]["end"]
  report_lib.write_markdown(out, [
      f"# cocodc ({c.variant})", report_lib.claims_table(doc),
      f"Claims compare means over the reported seeds {seeds(c)} on the **test** windows; "
      f"hyperparameters and targets come from the tuning seeds {tuning_seeds(c)} on the "
      f"**validation** windows (each domain's {c.eval_windows} evaluation windows from its "
      "held-out validation files, split alternately: even windows validation, odd windows "
      "test; no window is in both).",
      report_lib.tuning_table(db, c.experiment, digest,
                              {m: grid(c, family_of(m)) for m in methods}, SELECTION),
      "Every method has the same grid over its own step sizes (inner AdamW peak lr x outer "
      f"Nesterov lr); fixed, not tuned: Streaming DiLoCo's alpha = {c.alpha:g}, CoCoDC's "
      f"lam0 = {c.lam0:g} (sweeps/configs/cocodc.py: how they were set). "
      + ("The logged hyperparameters match the tuning runs' argmin."
         if not mismatch else f"**Logged hyperparameters differ from the tuning argmin: "
                              f"{mismatch}.**"),
      report_lib.table(["method", "inner lr", "outer lr", "fixed knob",
                        "final test loss (mean ± std)", "simulated time (s)"], rows),
      "## Targets and times to target",
      f"A baseline's target is its median validation loss over the tuning seeds, at its "
      f"chosen point, after {c.target_step} of {c.num_steps} steps; it is read before, and "
      "independently of, the reported runs. Targets: "
      + ", ".join(f"{m} {fmt(v)}" for m, v in target.items()) + ". "
      f"A time to target is the first grid point from which the test loss stays at or below "
      f"the target for {w} more grid points (first passage, window 0, beside it); — where "
      "never within the run.",
      "Steps to Streaming DiLoCo's target (same τ), on the common evaluation steps (every "
      f"{c.eval_every}); reduction = 1 − steps_CoCoDC / steps_Streaming:",
      report_lib.table(["τ", "method", f"held (w = {w})", "first passage", *seed_cols],
                       step_rows),
      f"Simulated seconds to DiLoCo's target, on one grid of simulated times for every "
      f"method (every {spacing:g} s up to {end:g} s; each curve linearly interpolated, no "
      "value past its run's end):",
      report_lib.table(["method", f"held (w = {w})", "first passage", *seed_cols], time_rows),
      report_lib.image("curves.png"), report_lib.image("gap.png"),
      "## Tuning grid (mean final validation loss over the tuning seeds)",
      report_lib.table(["method", "τ", *(label for label, _ in points)], grid_rows),
      _regime_text(c, tuning, gap), "## Setup",
      f"{c.num_workers} workers, one stdlib domain each ({', '.join(domains)}); a "
      f"{c.model.num_layers}-layer byte-level transformer (d = {c.model.d_model}) from scratch; "
      f"{c.num_steps} inner AdamW steps of {c.batch_size} windows of {c.seq_len} bytes; "
      f"H = {c.inner_steps}, {c.num_fragments} {c.fragment_pattern} fragments; "
      f"simulated step {c.step_time:g} s, full all-reduce {full_s:.2f} s, a fragment's "
      f"{frag_s:.2f} s (bandwidth {c.wan.bandwidth:g} B/s, latency {c.wan.latency:g} s)."])


def _grid_gaps(c, tuning, t) -> list[float | None]:
  """Per grid point: CoCoDC's − Streaming DiLoCo's mean final validation loss (τ = t)."""
  out = []
  for _, p in _points(c):
    a = tuning.get(families_lib.point_name(method_name("cocodc", t), p))
    b = tuning.get(families_lib.point_name(method_name("streaming", t), p))
    out.append(None if a is None or b is None else a - b)
  return out


def _regime_text(c, tuning, gap) -> str:
  """Where CoCoDC helps and where it does not, in numbers from the tuning grid."""
  lines = ["## Regime", ""]
  for t in (int(t) for t in c.overlaps):
    parts = [f"{label}: {report_lib.fmt(g, '+.4f')}"
             for (label, _), g in zip(_points(c), _grid_gaps(c, tuning, t), strict=True)]
    g = claims_lib.mean(gap[t], "lower")
    lines.append(f"- τ = {t}: CoCoDC − Streaming final validation loss per grid point (tuning "
                 f"seeds) {'; '.join(parts)}; on the reported seeds (test) "
                 f"{report_lib.fmt(g, '+.4f')} (negative: CoCoDC lower).")
  return "\n".join(lines)
