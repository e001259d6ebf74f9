"""bench_lm's report: claims.json, report.md and throughput.png from the database alone."""

from __future__ import annotations

import os

import numpy as np

from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.experiments.bench_lm.run import (
    DECODE_METHODS,
    METHODS,
    NAMES,
    RUN_METHOD,
    TIE_GAP,
    TRAIN_METHODS,
    tokens_per_call,
    unflatten,
)


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and throughput.png from the database alone."""
  runs = sorted((r for r in db.runs(c.experiment, status="done", method=RUN_METHOD)
                 if r["config_hash"] == digest), key=lambda r: r["seed"])
  if not runs:
    raise ValueError(f"{c.experiment}: no finished repeat of config {digest} in {db.path}")
  results = [unflatten(r["seed"], {m["name"]: m["value"] for m in db.metrics(run_id=r["id"])})
             for r in runs]
  doc = write_claims(c, out, [r["seed"] for r in runs], results, runs[0]["info"] or {})
  write_report(out, c, results, doc)
  return doc


# ----------------------------------------------------------------------------- outputs


def write_claims(c, out: str, seeds: list[int], results: list[dict], env: dict) -> dict:
  per = lambda name: [r[name] for r in results]
  per_method = lambda field, methods=METHODS: {m: [r[field][m] for r in results] for m in methods}
  med = claims_lib.median
  claims = [
      claims_lib.claim(
          id="cache_speedup", kind="reproduction",
          statement=(f"Greedy decoding of {c.new_tokens} tokens after a {c.prompt_len}-token "
                     f"prompt (batch {c.decode_batch}, {c.model} model) with the KV cache is "
                     f"at least {c.min_cache_speedup}x faster than rerunning the causal "
                     "forward over the whole buffer at each step"),
          paper="a KV cache makes each new token one position of work instead of the whole "
                "sequence (autoregressive Transformer decoding, GPT-2)",
          metric="tokens_per_s_ratio", better="higher", method="decode_cache",
          per_seed={"decode_cache": per("cache_speedup")}, threshold=c.min_cache_speedup,
          tokens_per_s=per_method("tokens_per_s", DECODE_METHODS)),
      claims_lib.claim(
          id="lora_train_speedup", kind="reproduction",
          statement=(f"A LoRA (rank {c.lora_rank}) Adam step on {c.batch_size} x {c.seq_len} "
                     f"tokens processes at least {c.min_lora_train_speedup}x the tokens per "
                     "second of a full fine-tuning Adam step"),
          paper="LoRA (Hu et al. 2021, arXiv 2106.09685) skips the base weights' gradients "
                "and optimizer state",
          metric="tokens_per_s_ratio", better="higher", method="lora",
          per_seed={"lora": per("lora_train_speedup")}, threshold=c.min_lora_train_speedup,
          tokens_per_s=per_method("tokens_per_s", ("full_ft", "lora"))),
  ]
  xla = {m: med(v) for m, v in per_method("xla_flops", TRAIN_METHODS).items()}
  peak = med(per("peak_flops_per_s"))
  tps = {m: med(v) for m, v in per_method("tokens_per_s").items()}
  tokens = tokens_per_call(c)
  reported = dict(
      tokens_per_s=tps,
      ms_per_call={m: med(v, "lower") for m, v in per_method("ms").items()},
      tokens_per_call=tokens,
      trace_s={m: med(v, "lower") for m, v in per_method("trace_s").items()},
      compile_s={m: med(v, "lower") for m, v in per_method("compile_s").items()},
      bitfit_train_speedup=med(per("bitfit_train_speedup")),
      bitfit_note="biases-only step / full fine-tuning step, tokens/s: LoRA's backward (input "
                  "gradients, no weight gradients) without the adapters, the ceiling of "
                  "lora_train_speedup",
      peak_flops_per_s=peak,
      xla_flops_per_step=xla,
      xla_flops_ratio_full_over_lora=(xla["full_ft"] / xla["lora"]
                                      if xla["full_ft"] and xla["lora"] else None),
      train_flop_utilisation={m: f * tps[m] / tokens[m] / peak if f and peak else None
                              for m, f in xla.items()},
      flops_note="XLA cost analysis of one training step (every op, not only matmuls); "
                 "utilisation = its FLOP/s at the median step time over the matmul's FLOP/s",
      trainable_params=results[0]["trainable_params"],
      decode_rows=c.decode_batch,
      decode_rows_identical=per("decode_rows_identical"),
      decode_rows_near_tie=per("decode_rows_near_tie"),
      load_avg=[[r["load_avg_start"], r["load_avg_end"]] for r in results],
      load_note="1-minute load average at the start and end of each repeat (other processes "
                "on the machine slow every method alike: the methods are timed round-robin)",
      per_repeat=[{k: r[k] for k in ("seed", "ms", "tokens_per_s", "compile_s", "cache_speedup",
                                     "lora_train_speedup", "bitfit_train_speedup",
                                     "peak_flops_per_s")}
                  for r in results],
      **{k: env.get(k) for k in ("backend", "device", "cpu_cores", "jax_version", "xla_flags")},
  )
  return claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                 variant=c.variant, seeds=seeds, claims=claims, reported=reported)


def plot_throughput(path: str, results: list[dict]) -> None:
  """Tokens/s per method (bar: mean over seeds, whisker: std, dots: seeds), train and decode."""
  with report_lib.figure(path, 1, 2, size=(10, 3.8), grid=False,
                         gridspec_kw={"width_ratios": [3, 2]}) as axes:
    for ax, methods, title in ((axes[0], TRAIN_METHODS, "training (one Adam step)"),
                               (axes[1], DECODE_METHODS, "greedy decoding")):
      values = [[r["tokens_per_s"][m] for r in results] for m in methods]
      x = np.arange(len(methods))
      std = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]  # as the table's
      ax.bar(x, [np.mean(v) for v in values], yerr=std, capsize=4,
             color=[f"C{i}" for i in range(len(methods))], alpha=0.8)
      for i, v in enumerate(values):
        ax.plot(np.full(len(v), x[i]), v, "k.", ms=5)
      ax.set_xticks(x, methods)
      ax.set(ylabel="tokens / s", title=title)
      ax.set_ylim(bottom=0)
      ax.grid(axis="y", alpha=0.3)


def write_report(out: str, c, results: list[dict], doc: dict) -> None:
  """``report.md`` (all numbers) and ``throughput.png``."""
  plot_throughput(os.path.join(out, "throughput.png"), results)
  rep = doc["reported"]
  per_method = lambda field: {m: [r[field][m] for r in results] for m in METHODS}
  params = rep["trainable_params"]
  fmt = report_lib.fmt
  med = claims_lib.median
  ratio = lambda name: med([r[name] for r in results])
  util, xla, ms = rep["train_flop_utilisation"], rep["xla_flops_per_step"], rep["ms_per_call"]
  quantities = [
      ("decode_cache / decode_nocache tokens/s (cache_speedup)", f"{ratio('cache_speedup'):.3f}"),
      *[(f"ms per decoding step (batch {c.decode_batch}), {m}", f"{ms[m] / c.new_tokens:.3f}")
        for m in DECODE_METHODS],
      ("lora / full_ft tokens/s (lora_train_speedup)", f"{ratio('lora_train_speedup'):.3f}"),
      ("bitfit / full_ft tokens/s (the ceiling of lora_train_speedup)",
       f"{rep['bitfit_train_speedup']:.3f}"),
      ("step time saved by skipping the weight gradients: full_ft - bitfit (ms)",
       f"{ms['full_ft'] - ms['bitfit']:.2f}"),
      ("step time the adapters add to the frozen-weights step: lora - bitfit (ms)",
       f"{ms['lora'] - ms['bitfit']:.2f}"),
      ("XLA FLOPs the adapters add: lora / bitfit",
       fmt(xla["lora"] / xla["bitfit"] if xla["lora"] and xla["bitfit"] else None, ".3f")),
      ("XLA FLOPs per step, full_ft / lora", fmt(rep["xla_flops_ratio_full_over_lora"], ".3f")),
      *[(f"XLA FLOPs per step, {m}", fmt(xla[m], ".4g")) for m in TRAIN_METHODS],
      (f"matmul {c.matmul_size}^3 float32 FLOP/s (practical peak)",
       f"{rep['peak_flops_per_s'] / 1e9:.1f} G"),
      *[(f"FLOP utilisation, {m} step (XLA FLOPs)", fmt(util[m], ".2%")) for m in TRAIN_METHODS],
      ("decoded rows identical with and without the cache, per repeat",
       ", ".join(f"{v:.0f}/{c.decode_batch}" for v in rep["decode_rows_identical"])),
      (f"of the others, rows diverging after a float near-tie (top-2 gap < {TIE_GAP:g})",
       ", ".join(f"{v:.0f}" for v in rep["decode_rows_near_tie"])),
      ("1-minute load average, start -> end of each repeat",
       ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in rep["load_avg"])),
  ]
  report_lib.write_markdown(out, [
      f"# bench_lm ({c.variant})",
      f"Backend {rep['backend']} ({rep['device']}, {rep['cpu_cores']} CPU cores), JAX "
      f"{rep['jax_version']}; `{c.model}` model, random init. Training: one Adam step on "
      f"{c.batch_size} x {c.seq_len} tokens (trainable parameters: full {params['full_ft']:,.0f}, "
      f"LoRA rank {c.lora_rank} {params['lora']:,.0f}, BitFit {params['bitfit']:,.0f}). "
      f"Decoding: greedy, batch {c.decode_batch}, prompt {c.prompt_len}, {c.new_tokens} new "
      f"tokens. Medians of {c.timing_repeats} timed calls per program (round-robin) after "
      f"{c.warmup} warm-up call(s), over {len(results)} repeats (seeds {doc['seeds']}).",
      report_lib.claims_table(doc),
      report_lib.method_table(per_method("tokens_per_s"), "tokens / s"),
      report_lib.table(["method", "tokens / call", "ms / call (median)", "tokens / s (median)",
                        "trace + lower (s)", "XLA compile (s)"],
                       [[f"{m}: {NAMES[m]}", str(rep["tokens_per_call"][m]),
                         f"{rep['ms_per_call'][m]:.2f}", f"{rep['tokens_per_s'][m]:,.0f}",
                         f"{rep['trace_s'][m]:.2f}", f"{rep['compile_s'][m]:.2f}"]
                        for m in METHODS]),
      report_lib.table(["quantity", "value"], quantities),
      report_lib.image("throughput.png"), "Per repeat (ms per call):",
      report_lib.table(["seed", *METHODS, "cache x", "LoRA x", "BitFit x", "matmul GFLOP/s"],
                       [[str(r["seed"]), *(f"{r['ms'][m]:.2f}" for m in METHODS),
                         f"{r['cache_speedup']:.3f}", f"{r['lora_train_speedup']:.3f}",
                         f"{r['bitfit_train_speedup']:.3f}",
                         f"{r['peak_flops_per_s'] / 1e9:.1f}"] for r in results])])
