"""bench_fl's report: claims.json, report.md and scaling.png from the database alone."""

from __future__ import annotations

import os

from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.experiments.bench_fl.run import METHODS, RUN_METHOD, unflatten


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and scaling.png from the database alone."""
  runs = sorted((r for r in db.runs(c.experiment, status="done", method=RUN_METHOD)
                 if r["config_hash"] == digest), key=lambda r: r["seed"])
  if not runs:
    raise ValueError(f"{c.experiment}: no finished repeat of config {digest} in {db.path}")
  results, xla = [], None
  for r in runs:
    values = {m["name"]: m["value"] for m in db.metrics(run_id=r["id"])}
    xla = values.get("xla_flops_per_round", xla)
    results.append(unflatten(r["seed"], values))
  env = runs[0]["info"] or {}
  doc = write_claims(c, out, [r["seed"] for r in runs], results, xla, env)
  write_report(out, c, results, doc)
  return doc


# ----------------------------------------------------------------------------- outputs


def write_claims(c, out: str, seeds: list[int], results: list[dict],
                 xla_flops: float | None, env: dict) -> dict:
  per = lambda name: [r[name] for r in results]
  per_method = lambda field: {m: [r[field][m] for r in results] for m in METHODS}
  rounds = f"{c.num_clients} clients x {c.local_steps} local steps x batch {c.batch_size}"
  claims = [
      claims_lib.claim(
          id="round_vs_centralized", kind="reproduction",
          statement=(f"A FedAvg round through the client-axis runtime ({rounds}) processes at "
                     f"least {c.min_round_vs_centralized}x the samples per second of centralized "
                     "training of the same model on the same number of samples in sequence"),
          paper="vmapping clients turns K sequential small batches into one batched step",
          metric="samples_per_s_ratio", better="higher", method="runtime",
          per_seed={"runtime": per("round_vs_centralized")},
          threshold=c.min_round_vs_centralized,
          samples_per_s={m: per_method("samples_per_s")[m] for m in ("runtime", "centralized")}),
      claims_lib.claim(
          id="round_vs_client_loop", kind="reproduction",
          statement=(f"The vmapped round processes at least {c.min_round_vs_client_loop}x the "
                     "samples per second of the same round as a Python loop over clients "
                     "calling a jitted local-training function"),
          paper="fedjax / Flower run clients in a Python loop; jaxfl maps them in one program",
          metric="samples_per_s_ratio", better="higher", method="runtime",
          per_seed={"runtime": per("round_vs_client_loop")},
          threshold=c.min_round_vs_client_loop,
          samples_per_s={m: per_method("samples_per_s")[m] for m in ("runtime", "client_loop")}),
      claims_lib.claim(
          id="time_per_client_step_growth", kind="reproduction",
          statement=(f"The round's time per client-step grows by at most "
                     f"{c.max_time_per_client_step_growth}x from K={min(c.scaling_clients)} to "
                     f"K={max(c.scaling_clients)} clients"),
          paper="the client axis scales linearly in K",
          metric="time_per_client_step_ratio", better="lower", method="runtime",
          per_seed={"runtime": per("time_per_client_step_growth")},
          threshold=c.max_time_per_client_step_growth,
          time_per_client_step_ms={k: [r["time_per_client_step_ms"][k] for r in results]
                                   for k in results[0]["time_per_client_step_ms"]}),
  ]
  med = claims_lib.median
  samples = c.num_clients * c.local_steps * c.batch_size
  reported = dict(
      runtime_overhead=med(per("runtime_overhead")),
      runtime_overhead_note="plain hand-written vmap round time / the runtime's round time on "
                            "one device (= samples/s (i') / (v)); 1 = no overhead, < 1 = "
                            "runtime slower",
      flop_utilisation=med(per("flop_utilisation")),
      flops_per_s=med(per("flops_per_s")),
      peak_flops_per_s=med(per("peak_flops_per_s")),
      flops_per_round_analytic=results[0]["flops_per_round"],
      flops_per_round_xla_cost_analysis=xla_flops,
      flops_per_round_xla_times_local_steps=(None if xla_flops is None
                                             else xla_flops * c.local_steps),
      flop_utilisation_xla=None if xla_flops is None else
      med([xla_flops * c.local_steps / (r["ms"]["runtime"] / 1e3) / r["peak_flops_per_s"]
           for r in results]),
      flops_note="analytic: matmul flops, forward 2ab per layer and sample, backward 2ab "
                 "(weight gradient) + 2ab (input gradient, not for the first layer); XLA's cost "
                 "analysis counts a scan body once, so it is about 1/local_steps of the executed "
                 "flops: scaled by local_steps it is an estimate that includes elementwise ops",
      time_per_client_step_growth_from_fastest=med(
          per("time_per_client_step_growth_from_fastest"), "lower"),
      samples_per_round=samples,
      ms_per_round={m: med(v, "lower") for m, v in per_method("ms").items()},
      samples_per_s={m: med(v) for m, v in per_method("samples_per_s").items()},
      per_repeat=[{k: r[k] for k in ("seed", "ms", "samples_per_s", "round_vs_centralized",
                                     "round_vs_client_loop", "runtime_overhead",
                                     "peak_flops_per_s", "flop_utilisation",
                                     "time_per_client_step_ms",
                                     "time_per_client_step_growth",
                                     "time_per_client_step_growth_from_fastest")}
                  for r in results],
      **{k: env.get(k) for k in ("backend", "device", "devices", "jax_version", "xla_flags")},
  )
  return claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                 variant=c.variant, seeds=seeds, claims=claims, reported=reported)


def write_report(out: str, c, results: list[dict], doc: dict) -> None:
  """``report.md`` (all numbers) and ``scaling.png`` (time per client-step vs K)."""
  ks = sorted(int(k) for k in results[0]["time_per_client_step_ms"])
  with report_lib.figure(os.path.join(out, "scaling.png"), size=(6, 4)) as ax:
    for i, r in enumerate(results):
      us = [1e3 * r["time_per_client_step_ms"][str(k)] for k in ks]
      ax.plot(ks, us, "o-", color=f"C{i % 10}", label=f"repeat {r['seed']}")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="clients per round K", ylabel="time per client-step (µs)",
           title=f"FedAvg round, {c.scaling_samples_per_client} samples/client, batch "
                 f"{c.batch_size}, {c.local_steps} steps")
  rep = doc["reported"]
  med, fmt = claims_lib.median, report_lib.fmt
  names = {"runtime": "(i) jaxfl runtime round (FedAvg.jit_round)",
           "centralized": "(ii) centralized, same samples in sequence",
           "client_loop": "(iii) Python loop over clients (jitted local_train each)",
           "plain_vmap": "(v) hand-written jitted vmap round",
           "runtime_vmap": "(i') jaxfl runtime round on one device (vmap only)"}
  ratio = lambda name: med([r[name] for r in results])
  quantities = [
      ("(i)/(ii) samples/s, round vs centralized", fmt(ratio("round_vs_centralized"), ".3f")),
      ("(i)/(iii) samples/s, round vs client loop", fmt(ratio("round_vs_client_loop"), ".3f")),
      ("(i')/(v) samples/s, one-device runtime vs hand-written (runtime_overhead)",
       fmt(rep["runtime_overhead"], ".3f")),
      ("FLOPs per round, analytic (matmuls, forward + backward)",
       fmt(rep["flops_per_round_analytic"], ".4g")),
      ("FLOPs per round, XLA cost analysis (scan body counted once)",
       fmt(rep["flops_per_round_xla_cost_analysis"], ".4g")),
      ("FLOPs per round, XLA cost analysis x local_steps",
       fmt(rep["flops_per_round_xla_times_local_steps"], ".4g")),
      ("achieved FLOP/s of (i), analytic", f"{rep['flops_per_s'] / 1e9:.3f} G"),
      (f"matmul {c.matmul_size}^3 float32 FLOP/s (practical peak)",
       f"{rep['peak_flops_per_s'] / 1e9:.1f} G"),
      ("FLOP utilisation of (i), analytic", fmt(rep["flop_utilisation"], ".2%")),
      ("FLOP utilisation of (i), XLA x local_steps", fmt(rep["flop_utilisation_xla"], ".2%")),
      ("time per client-step growth from the fastest smaller K",
       fmt(rep["time_per_client_step_growth_from_fastest"], ".3f")),
  ]
  step = {k: med([r["time_per_client_step_ms"][str(k)] for r in results], "lower") for k in ks}
  report_lib.write_markdown(out, [
      f"# bench_fl ({c.variant})",
      f"Backend {rep['backend']} ({rep['device']}); round: {c.num_clients} clients x "
      f"{c.local_steps} local steps x batch {c.batch_size} = {rep['samples_per_round']} "
      f"samples, MLP {c.model} on {c.dataset} ({c.partition} partition); medians of "
      f"{c.repeats} timed calls after {c.warmup} warm-up calls, over {c.num_seeds} repeats "
      f"(seeds {doc['seeds']}).",
      report_lib.claims_table(doc),
      report_lib.table(["method", "ms / round", "samples / s"],
                       [[names[m], f"{rep['ms_per_round'][m]:.3f}",
                         f"{rep['samples_per_s'][m]:,.0f}"] for m in METHODS]),
      report_lib.table(["quantity", "value"], quantities),
      f"K-scaling on synthetic clients ({c.scaling_samples_per_client} samples each, drawn "
      "with replacement from the training set):",
      report_lib.table(["K", "ms / round", "time per client-step (µs)", f"ratio to K={ks[0]}"],
                       [[str(k), f"{step[k] * k * c.local_steps:.3f}", f"{1e3 * step[k]:.2f}",
                         f"{step[k] / step[ks[0]]:.3f}"] for k in ks]),
      report_lib.image("scaling.png"), "Per repeat (ms per round):",
      report_lib.table(
          ["seed", *METHODS, "(i)/(ii)", "(i)/(iii)", "(v)/(i) time", "growth"],
          [[str(r["seed"]), *(f"{r['ms'][m]:.3f}" for m in METHODS),
            *(f"{r[k]:.3f}" for k in ("round_vs_centralized", "round_vs_client_loop",
                                      "runtime_overhead", "time_per_client_step_growth"))]
           for r in results])])
