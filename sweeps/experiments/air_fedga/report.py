"""Air-FedGA's report: claims.json, report.md, accuracy.png and mse.png from the database,
and regime.md / regime.png over a sweep's grid points."""

from __future__ import annotations

import math
import os

from jaxfl.planners.power import POLICIES
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.experiments.air_fedga.run import METHODS, grid
from sweeps.families import seeds

NAMES = {"air_fedga": "Air-FedGA", "air_fedga_random": "Air-FedGA (random groups)",
         "air_fedavg": "Air-FedAvg", "fedasync": "FedAsync (digital, float32)",
         "fedasync_low_bits": "FedAsync (digital, low bits)",
         "fedavg_digital": "FedAvg (ideal digital)"}
SUMMARIES = ("time_to_target", "time_to_target_first", "time_to_target_updates", "mean_mse",
             "learning_rate", "beta0", "final_accuracy", "mean_staleness", "num_groups",
             "eval_size", *(f"mse_{p}" for p in POLICIES))


def accuracy_gap(curves, t2t, baselines) -> float | None:
  """The accuracy gap the time claims are about: at Air-FedGA's median time to target
  (the nearest grid time), the least over ``baselines`` of Air-FedGA's mean test accuracy
  minus the baseline's (means over seeds, on the common grid); None if undefined."""
  t = claims_lib.median(t2t["air_fedga"], "lower")
  if t is None:
    return None

  def mean_at(method):
    vals = []
    for _, times, values in curves[method].values():
      if times:
        i = min(range(len(times)), key=lambda j: abs(times[j] - t))
        vals.append(values[i])
    return None if not vals or None in vals else sum(vals) / len(vals)

  own, others = mean_at("air_fedga"), [mean_at(b) for b in baselines]
  return None if own is None or None in others else min(own - b for b in others)


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md, accuracy.png and mse.png from the database alone."""
  final = {name: db.final_values(c.experiment, name, config_hash=digest) for name in SUMMARIES}
  # A run without a time_to_target row never reached the target.
  runs = {(r["method"], r["seed"]) for r in db.runs(c.experiment, status="done")
          if r["config_hash"] == digest}
  per_seed = lambda name, methods: {
      m: [final[name].get(m, {}).get(s) if (m, s) in runs else None for s in seeds(c)]
      for m in methods}
  t2t = per_seed("time_to_target", METHODS)
  paper = "Air-FedGA trains 29.9%-71.6% faster than the state of the art (arXiv 2507.05704)"
  held = f"and stays there for {c.target_window} more of {c.log_points} common grid points"

  def reduction(method, baseline):
    a = claims_lib.median(t2t[method], "lower")
    b = claims_lib.median(t2t[baseline], "lower")
    return None if a is None or b is None else 100.0 * (1.0 - a / b)

  def time_claim(id, baseline, name, paper_text, **extra):
    return claims_lib.claim(
        id=id, kind="reproduction",
        statement=f"Air-FedGA reaches {c.target_accuracy:.0%} test accuracy ({held}) in less "
                  f"simulated time than {name}",
        paper=paper_text, metric="sim_time_to_target", better="lower", method="air_fedga",
        baseline=baseline, margin=c.time_margin, strict=True,
        per_seed={"air_fedga": t2t["air_fedga"], baseline: t2t[baseline]},
        reduction_percent=reduction("air_fedga", baseline), **extra)

  bits, low = f"{c.comm.bits_per_param:g}", f"{c.low_bits_per_param:g}"
  claims = [
      time_claim("time_to_target_vs_air_fedavg", "air_fedavg", "Air-FedAvg", paper,
                 paper_reduction_percent=[29.9, 71.6]),
      time_claim("time_to_target_vs_fedasync", "fedasync",
                 f"FedAsync with {bits}-bit digital payloads", paper,
                 paper_reduction_percent=[29.9, 71.6]),
      time_claim("time_to_target_vs_fedasync_low_bits", "fedasync_low_bits",
                 f"FedAsync with {low}-bit digital payloads (quantisation error not charged)",
                 paper, paper_reduction_percent=[29.9, 71.6]),
      time_claim("planned_vs_random_grouping", "air_fedga_random",
                 "random groups of the same sizes",
                 "worker grouping is one of Air-FedGA's optimisation variables "
                 "(arXiv 2507.05704)"),
  ]
  mse = {p: [final[f"mse_{p}"].get("air_fedga", {}).get(s) for s in seeds(c)] for p in POLICIES}
  claims.append(claims_lib.claim(
      id="optimal_power_mse_vs_zero_forcing", kind="check",
      statement="The MSE-optimal power policy's mean AirComp aggregation MSE on Air-FedGA's "
                "rounds is below channel inversion's on the same channels",
      paper="power scaling and denoising factors minimise the AirComp MSE (Cao et al., TWC "
            "2020; arXiv 2507.05704)",
      metric="mean_aggregation_mse", better="lower", method="optimal", baseline="zero_forcing",
      per_seed={"optimal": mse["optimal"], "zero_forcing": mse["zero_forcing"]}))
  curves = {m: db.series(c.experiment, m, "accuracy", config_hash=digest) for m in METHODS}
  gap = accuracy_gap(curves, t2t, ("air_fedavg", "fedasync"))
  sizes = [v for v in per_seed("eval_size", ["air_fedga"])["air_fedga"] if v]
  noise = (math.sqrt(c.target_accuracy * (1 - c.target_accuracy) / sizes[0])
           if sizes else None)
  claims.append(claims_lib.claim(
      id="evaluation_noise_vs_gap", kind="check",
      statement="The test accuracy's sampling noise at the target (one standard error) is at "
                "most a third of the accuracy gap to Air-FedAvg and FedAsync at Air-FedGA's "
                "time to target",
      paper="evaluation protocol (README, How claims are evaluated)",
      metric="accuracy_points", better="lower", method="noise_x3", baseline="gap",
      per_seed={"noise_x3": [None if noise is None else 300.0 * noise],
                "gap": [None if gap is None else 100.0 * gap]}))
  first = per_seed("time_to_target_first", METHODS)
  updates = per_seed("time_to_target_updates", METHODS)
  doc = claims_lib.write_claims(
      os.path.join(out, "claims.json"), experiment=c.experiment, variant=c.variant,
      seeds=seeds(c), claims=claims,
      reported=dict(time_to_target=t2t, time_to_target_first_passage=first,
                    time_to_target_first_passage_per_update=updates,
                    learning_rate=per_seed("learning_rate", METHODS),
                    beta0=per_seed("beta0", METHODS),
                    final_accuracy=per_seed("final_accuracy", METHODS),
                    mean_staleness=per_seed("mean_staleness", METHODS),
                    num_groups=per_seed("num_groups", ["air_fedga"])["air_fedga"],
                    mse_by_policy=mse, test_images=sizes[0] if sizes else None))
  write_report(out, c, db, digest, doc, curves, t2t, mse, per_seed)
  return doc


def write_report(out, c, db, digest, doc, curves, t2t, mse, per_seed) -> None:
  with report_lib.figure(os.path.join(out, "accuracy.png")) as ax:
    for i, (m, by_seed) in enumerate(curves.items()):
      report_lib.seed_band(ax, by_seed, x="time", scale=100.0, color=f"C{i}", label=NAMES[m],
                           alpha=0.15)
    ax.axhline(100 * c.target_accuracy, color="k", ls=":", lw=1, label="target")
    ax.set(xlabel="simulated time (s)", ylabel="test accuracy (%)",
           title=f"{c.num_workers} workers, SNR {c.snr_db:g} dB, tiers {tuple(c.compute_tiers)}")
  with report_lib.figure(os.path.join(out, "mse.png"), size=(5, 3.5)) as ax:
    ax.boxplot([[v for v in mse[p] if v is not None] for p in mse], tick_labels=list(mse))
    ax.set(ylabel="mean aggregation MSE per round", yscale="log",
           title="power policies on Air-FedGA's channels")
  fmt, mean_std, med = report_lib.fmt, report_lib.mean_std, claims_lib.median
  acc, stale = per_seed("final_accuracy", METHODS), per_seed("mean_staleness", METHODS)
  first = per_seed("time_to_target_first", METHODS)
  updates = per_seed("time_to_target_updates", METHODS)
  methods = report_lib.table(
      ["method", "time to target (s), median", "per seed", "first passage on the grid",
       "first passage, any update", "final accuracy", "mean staleness"],
      [[NAMES[m], med(t2t[m], "lower"), ", ".join(fmt(v) for v in t2t[m]),
        med(first[m], "lower"), med(updates[m], "lower"), mean_std(acc[m]),
        mean_std(stale[m])] for m in METHODS])
  reductions = ", ".join(f"{cl['id']}: {fmt(cl.get('reduction_percent'))}%"
                         for cl in doc["claims"] if "reduction_percent" in cl)
  report_lib.write_markdown(out, [
      f"# air_fedga ({c.variant})", report_lib.claims_table(doc),
      f"Reductions in time to target: {reductions} (paper: 29.9-71.6%).", methods,
      f"Time to target: the first of {c.log_points} common grid times (every "
      f"{c.t_max / c.log_points:g} s) from which test accuracy stays at or above "
      f"{c.target_accuracy:.0%} for {c.target_window} more; the first passage on the grid "
      "and at any global update are shown beside it.",
      report_lib.tuning_table(db, c.experiment, digest, {m: grid(c) for m in METHODS},
                              "median held time to target on the validation split, then "
                              f"median final accuracy, over {c.num_tuning_seeds} tuning seeds",
                              NAMES),
      report_lib.image("accuracy.png"),
      report_lib.table(["power policy", "mean MSE (mean ± std over seeds)"],
                       [[p, mean_std(mse[p])] for p in mse]),
      report_lib.image("mse.png"),
      f"{c.num_workers} workers, compute tiers {tuple(c.compute_tiers)} x "
      f"{c.base_compute_time} s, SNR {c.snr_db} dB, {c.comm.fading} fading, bandwidth "
      f"{c.comm.bandwidth_hz:g} channel uses/s, AirComp {c.comm.values_per_use:g} real "
      f"entr{'y' if c.comm.values_per_use == 1 else 'ies'} per channel use, digital "
      f"{c.comm.bits_per_param:g} (and {c.low_bits_per_param:g}) bits/parameter at the "
      f"Shannon rate, target {c.target_accuracy:.0%}, t_max {c.t_max:g} s; "
      f"{c.validation:.0%} of the training set held out for selection. Groups and mixing "
      "rule are reconstructions (arXiv 2507.05704's text was not available)."])


# ----------------------------------------------------------------------------- regimes


def report_sweep(folder: str, points: list[tuple[dict, object, dict]]) -> None:
  """``regime.md`` and ``regime.png``: where over-the-air grouping pays, over a grid.

  For every grid point (``get_sweep()``: compute heterogeneity x digital payload), the
  ratio of Air-FedGA's median time to target to Air-FedAvg's and to FedAsync's (below
  1: Air-FedGA is faster), against the heterogeneity max/min compute time, a line per
  ``comm.bits_per_param``.
  """
  rows = []
  for _, c, doc in points:
    by_id = {cl["id"]: cl for cl in doc["claims"]}
    ratio = lambda cl: (None if cl["value"] is None or cl["baseline_value"] is None
                        else cl["value"] / cl["baseline_value"])
    tiers = tuple(c.compute_tiers)
    rows.append(dict(heterogeneity=max(tiers) / min(tiers), bits=float(c.comm.bits_per_param),
                     vs_air_fedavg=ratio(by_id["time_to_target_vs_air_fedavg"]),
                     vs_fedasync=ratio(by_id["time_to_target_vs_fedasync"]),
                     air_fedga=by_id["time_to_target_vs_air_fedavg"]["value"],
                     air_fedavg=by_id["time_to_target_vs_air_fedavg"]["baseline_value"],
                     fedasync=by_id["time_to_target_vs_fedasync"]["baseline_value"]))
  rows.sort(key=lambda r: (r["heterogeneity"], r["bits"]))
  with report_lib.figure(os.path.join(folder, "regime.png"), 1, 2, size=(10, 3.8), sharey=True,
                         legend=False) as axes:
    for ax, key, title in ((axes[0], "vs_air_fedavg", "Air-FedGA / Air-FedAvg"),
                           (axes[1], "vs_fedasync", "Air-FedGA / FedAsync")):
      for i, bits in enumerate(sorted({r["bits"] for r in rows})):
        pts = [(r["heterogeneity"], r[key]) for r in rows if r["bits"] == bits and r[key]]
        if pts:
          ax.plot(*zip(*pts), "o-", color=f"C{i}", label=f"{bits:g} bits/parameter digital")
      ax.axhline(1.0, color="k", lw=1, ls=":")
      ax.set(xscale="log", xlabel="compute heterogeneity (slowest / fastest)", title=title)
    axes[0].set_ylabel("time-to-target ratio (< 1: Air-FedGA faster)")
    axes[1].legend(fontsize=8)
  report_lib.write_markdown(folder, [
      "# air_fedga: where over-the-air grouping pays",
      "Median simulated time to the target accuracy (s) per grid point, and Air-FedGA's "
      "ratio to each baseline (below 1: Air-FedGA is faster; — : never reached).",
      report_lib.table(["heterogeneity", "digital bits / parameter", "Air-FedGA", "Air-FedAvg",
                        "FedAsync", "ratio to Air-FedAvg", "ratio to FedAsync"],
                       [[f"{r['heterogeneity']:g}", f"{r['bits']:g}", r["air_fedga"],
                         r["air_fedavg"], r["fedasync"], r["vs_air_fedavg"], r["vs_fedasync"]]
                        for r in rows]),
      report_lib.image("regime.png")], name="regime.md")
