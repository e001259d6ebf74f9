"""Benchmark: training and decoding tokens per second of the byte-level transformer LM.

Measured in one process, after compilation (the first ``warmup`` calls, then
``timing_repeats`` timed calls of each program, round-robin, each ended by
``jax.block_until_ready``; medians reported), on a randomly initialised
:mod:`jaxfl.models.transformer` model (sweeps/configs/bench_lm.py):

(i)   ``full_ft``: one jitted Adam step of full fine-tuning, every parameter of the
      adapter-free model differentiated;
(ii)  ``lora``: one jitted Adam step of LoRA (rank ``lora_rank`` on the default targets of
      every block): only the adapters are differentiated and updated; the frozen base
      weights are a jit *argument* (closed-over arrays would compile in as constants);
(iii) ``bitfit``: one jitted Adam step training only the bias terms of the adapter-free
      model (BitFit, Ben Zaken et al. 2021, arXiv 2106.10199), a diagnostic: its backward
      computes every input gradient and no weight gradient, like LoRA's, but has no
      adapter matmuls, so ``bitfit / full_ft`` is the speedup LoRA would get if its
      adapters cost nothing (the ceiling of ``lora / full_ft``);
(iv)  ``decode_cache``: greedy decoding with the KV cache, :func:`transformer.generate`
      with ``use_cache=True``;
(v)   ``decode_nocache``: the same decoding rerunning the full causal forward over the
      fixed buffer at each step (``use_cache=False``);
(vi)  a large float32 matmul (the machine's practical FLOP/s), timed among them.

Each program is lowered and compiled explicitly (``jit(f).lower(...).compile()``) so its
tracing and XLA compile seconds are measured, and the timed calls run that executable.
The decoded tokens of (iv) and (v) are compared on every repeat: they must be
identical, except after a float32 near-tie of the greedy argmax (the two paths sum in
different orders), which is checked on the logits and counted.

A repeat ("seed") draws its own model and tokens; its programs are compiled afresh, so
every repeat measures its own compile times. Every number is a metric of the repeat's
run, so :func:`report` rebuilds claims.json and report.md from the database alone.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import check
from jaxfl.models import lora, transformer
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.sweep import RunSpec
from sweeps.timing import environment, make_matmul, time_interleaved

TRAIN_METHODS = ("full_ft", "lora", "bitfit")
DECODE_METHODS = ("decode_cache", "decode_nocache")
METHODS = TRAIN_METHODS + DECODE_METHODS
NAMES = {"full_ft": "full fine-tuning, Adam step", "lora": "LoRA, Adam step",
         "bitfit": "biases only (BitFit), Adam step: diagnostic",
         "decode_cache": "greedy decoding, KV cache", "decode_nocache": "greedy decoding, no cache"}
# Sub-keys of a repeat's root key, so each consumer draws independent numbers.
KEY_MODEL, KEY_TRAIN_TOKENS, KEY_PROMPT, KEY_MATMUL = range(4)
# A greedy step whose top-2 logits differ by less than this may legitimately pick another
# token in the cached and uncached paths (float32 sums in a different order, ~1e-6).
TIE_GAP = 1e-4


def _pos_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  check(isinstance(c.seed, int) and not isinstance(c.seed, bool) and c.seed >= 0, "seed",
        "a non-negative integer", c.seed)
  check(c.model in transformer.VARIANTS, "model", f"one of {sorted(transformer.VARIANTS)}",
        c.model)
  max_len = transformer.VARIANTS[c.model].max_len
  for field in ("num_seeds", "batch_size", "seq_len", "lora_rank", "decode_batch",
                "prompt_len", "new_tokens", "timing_repeats", "matmul_size"):
    check(_pos_int(c[field]), field, "a positive integer", c[field])
  check(c.seq_len <= max_len, "seq_len", f"at most the {c.model} model's max_len={max_len}",
        c.seq_len)
  check(c.prompt_len + c.new_tokens <= max_len, "new_tokens",
        f"prompt_len + new_tokens <= the {c.model} model's max_len={max_len} "
        f"(prompt_len={c.prompt_len})", c.new_tokens)
  check(isinstance(c.warmup, int) and not isinstance(c.warmup, bool) and c.warmup >= 1,
        "warmup", "an integer >= 1 (the first call checks the decoded tokens)", c.warmup)
  for field in ("learning_rate", "min_cache_speedup", "min_lora_train_speedup"):
    v = c[field]
    check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
          field, "a positive finite number", v)


# ----------------------------------------------------------------------------- programs


def model_configs(c) -> tuple[transformer.LMConfig, transformer.LMConfig]:
  """The adapter-free model (full fine-tuning, decoding) and the same model with adapters."""
  base = transformer.VARIANTS[c.model]
  return base, base.with_lora(c.lora_rank)


def make_full_step(config: transformer.LMConfig, tx: optax.GradientTransformation) -> Callable:
  """``step(params, opt_state, inputs, targets) -> (params, opt_state, loss)``."""

  def step(params, opt_state, inputs, targets):
    loss, grads = jax.value_and_grad(
        lambda p: transformer.lm_loss(config, p, inputs, targets))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def make_partial_step(config: transformer.LMConfig,
                      tx: optax.GradientTransformation) -> Callable:
  """``step(trainable, opt_state, frozen, inputs, targets) -> (trainable, opt_state, loss)``.

  Only ``trainable`` (LoRA's adapters, BitFit's biases) is differentiated, so XLA never
  builds the frozen weights' gradients nor keeps the activations only they would need.
  ``frozen`` is an argument: closed over, its arrays would compile in as constants.
  """

  def step(trainable, opt_state, frozen, inputs, targets):
    loss, grads = jax.value_and_grad(
        lambda t: transformer.lm_loss(config, lora.combine(t, frozen), inputs, targets))(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state, loss

  return step


def make_decode(config: transformer.LMConfig, num_tokens: int, use_cache: bool) -> Callable:
  """``decode(params, prompt) -> tokens [B, P + num_tokens]`` (``num_tokens`` static)."""
  return functools.partial(transformer.generate, config, num_tokens=num_tokens,
                           use_cache=use_cache)


class Compiled(NamedTuple):
  """One program: its executable, the arguments it is timed on and its compile costs."""

  fn: Callable  # jax.stages.Compiled
  args: tuple
  trace_s: float  # tracing + lowering to StableHLO
  compile_s: float  # XLA compilation
  xla_flops: float | None  # XLA cost analysis of one call (None where unavailable)

  def __call__(self):
    return self.fn(*self.args)


def compile_program(fn: Callable, *args) -> Compiled:
  """Lower and compile ``jit(fn)`` for ``args``, timing each stage."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  cost = None
  # Backends without cost analysis raise various errors.
  with contextlib.suppress(Exception):
    cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = float(cost["flops"]) if cost and "flops" in cost else None
  return Compiled(compiled, args, t1 - t0, t2 - t1, flops)


class Setup(NamedTuple):
  """One repeat's programs, compiled for its inputs."""

  programs: dict[str, Compiled]
  base: transformer.LMConfig
  params: dict  # the adapter-free model
  trainable_params: dict[str, int]  # per training method


def make_setup(c, seed: int) -> Setup:
  """Model, tokens and compiled programs of one repeat, all drawn from ``seed``."""
  key = jax.random.PRNGKey(seed)
  base, with_lora = model_configs(c)
  # One init of the adapter model gives both: its non-adapter leaves are exactly the
  # adapter-free model's parameter tree.
  lora_params = transformer.init(with_lora, jax.random.fold_in(key, KEY_MODEL))
  adapters, params = lora.split(lora_params, lora.path_labels(lora_params, lora.is_lora_path))
  biases, weights = lora.split(params, lora.path_labels(params, lambda path: path[-1] == "bias"))
  tokens = jax.random.randint(jax.random.fold_in(key, KEY_TRAIN_TOKENS),
                              (c.batch_size, c.seq_len + 1), 0, base.vocab_size, jnp.int32)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  prompt = jax.random.randint(jax.random.fold_in(key, KEY_PROMPT), (c.decode_batch, c.prompt_len),
                              0, 256, jnp.int32)  # byte tokens (no EOS/BOS)
  tx = optax.adam(c.learning_rate)
  programs = {
      "full_ft": compile_program(make_full_step(base, tx), params, tx.init(params), inputs,
                                 targets),
      "lora": compile_program(make_partial_step(with_lora, tx), adapters, tx.init(adapters),
                              params, inputs, targets),
      "bitfit": compile_program(make_partial_step(base, tx), biases, tx.init(biases), weights,
                                inputs, targets),
      "decode_cache": compile_program(make_decode(base, c.new_tokens, True), params, prompt),
      "decode_nocache": compile_program(make_decode(base, c.new_tokens, False), params, prompt),
  }
  return Setup(programs, base, params, {"full_ft": lora.count(params),
                                        "lora": lora.count(adapters),
                                        "bitfit": lora.count(biases)})


_jit_apply = jax.jit(transformer.apply, static_argnums=0)


def greedy_agreement(config: transformer.LMConfig, params: dict, prompt_len: int,
                     cached: np.ndarray, uncached: np.ndarray) -> tuple[int, int]:
  """``(identical rows, rows that diverge after a near-tie)``; raises on a real disagreement.

  Two greedy decodings of the same model agree token for token unless the top-2 logits
  at some step are within float32 rounding of each other. At a row's first differing
  position both sequences share the prefix, so its logits decide: a top-2 gap under
  :data:`TIE_GAP` is a tie (counted); a larger one means the two paths compute different
  functions.

  Raises:
    AssertionError: the prompt was changed, or the paths disagree after a clear argmax.
  """
  identical = ties = 0
  for row in range(cached.shape[0]):
    diff = np.flatnonzero(cached[row] != uncached[row])
    if diff.size == 0:
      identical += 1
      continue
    t = int(diff[0])
    if t < prompt_len:
      raise AssertionError(f"decoding changed the prompt of row {row} at position {t}")
    logits = _jit_apply(config, params, jnp.asarray(cached[row:row + 1, :t]))[0, -1]
    top2 = np.sort(np.asarray(logits))[-2:]
    gap = float(top2[1] - top2[0])
    if gap >= TIE_GAP:
      raise AssertionError(f"greedy decoding with and without the KV cache disagree at row "
                           f"{row}, position {t}: tokens {cached[row, t]} vs {uncached[row, t]}, "
                           f"top-2 logit gap {gap:.3g} (not a float near-tie)")
    ties += 1
  return identical, ties


def tokens_per_call(c) -> dict[str, int]:
  """Tokens one call processes: trained positions of a step, new tokens of a decoding."""
  train, decode = c.batch_size * c.seq_len, c.decode_batch * c.new_tokens
  return {**{m: train for m in TRAIN_METHODS}, **{m: decode for m in DECODE_METHODS}}


def run_repeat(c, seed: int, log=print) -> dict:
  """One repeat: compile every program, check decoding, time everything round-robin."""
  load_start = os.getloadavg()[0]
  s = make_setup(c, seed)
  prog = s.programs
  if log:
    log(f"[repeat {seed}] compiled: " + ", ".join(
        f"{m} {p.trace_s:.2f} s trace + {p.compile_s:.2f} s XLA" for m, p in prog.items()))
  # The first call of each program is the decoding check and the first warm-up call.
  t0 = time.perf_counter()
  cached = np.asarray(jax.block_until_ready(prog["decode_cache"]()))
  uncached = np.asarray(jax.block_until_ready(prog["decode_nocache"]()))
  for m in TRAIN_METHODS:
    jax.block_until_ready(prog[m]())
  identical, ties = greedy_agreement(s.base, s.params, c.prompt_len, cached, uncached)
  matmul = make_matmul(c.matmul_size, jax.random.fold_in(jax.random.PRNGKey(seed), KEY_MATMUL))
  jax.block_until_ready(matmul())
  if log:
    log(f"[repeat {seed}] first calls {time.perf_counter() - t0:.2f} s; decoded rows identical "
        f"with and without the cache: {identical}/{c.decode_batch} ({ties} after a near-tie)")
  times = time_interleaved({**prog, "matmul": matmul}, warmup=c.warmup - 1,
                           repeats=c.timing_repeats, log=None)
  peak = 2.0 * c.matmul_size**3 / statistics.median(times.pop("matmul"))
  med = {m: statistics.median(t) for m, t in times.items()}
  tokens = tokens_per_call(c)
  tps = {m: tokens[m] / med[m] for m in METHODS}
  result = dict(
      seed=seed, ms={m: 1e3 * v for m, v in med.items()}, tokens_per_s=tps,
      trace_s={m: p.trace_s for m, p in prog.items()},
      compile_s={m: p.compile_s for m, p in prog.items()},
      # A training step has no loop inside, so its cost analysis is the executed flops.
      xla_flops={m: prog[m].xla_flops for m in TRAIN_METHODS},
      trainable_params={m: float(v) for m, v in s.trainable_params.items()},
      cache_speedup=tps["decode_cache"] / tps["decode_nocache"],
      lora_train_speedup=tps["lora"] / tps["full_ft"],
      bitfit_train_speedup=tps["bitfit"] / tps["full_ft"],
      peak_flops_per_s=peak,
      decode_rows_identical=float(identical), decode_rows_near_tie=float(ties),
      load_avg_start=load_start, load_avg_end=os.getloadavg()[0])
  if log:
    log(f"[repeat {seed}] " + " | ".join(f"{m} {1e3 * med[m]:.1f} ms ({tps[m]:,.0f} tok/s)"
                                         for m in METHODS) +
        f" | cache x{result['cache_speedup']:.2f}, LoRA x{result['lora_train_speedup']:.2f}, "
        f"BitFit x{result['bitfit_train_speedup']:.2f} | matmul {c.matmul_size}^3 "
        f"{peak / 1e9:.1f} GFLOP/s | load {load_start:.1f} -> {result['load_avg_end']:.1f}")
  return result


# ----------------------------------------------------------------------------- sweep protocol
# One run per repeat: RunSpec("bench", seed) logs every number as a metric at step 0, so
# report() rebuilds claims.json and report.md from the database alone.

RUN_METHOD = "bench"


def prepare(c) -> None:
  del c  # nothing to load: the model is randomly initialised, the tokens random


def run_specs(c) -> list[RunSpec]:
  return [RunSpec(RUN_METHOD, c.seed + i) for i in range(c.num_seeds)]


def rounds(c, spec: RunSpec) -> int:
  del c, spec
  return 1


def execute(c, spec: RunSpec, ctx, run_dir: str, log_metrics, progress) -> dict:
  """One repeat: all numbers of :func:`run_repeat`, logged as metrics at step 0."""
  del ctx, run_dir  # nothing to checkpoint: a repeat is timed whole
  env = environment()
  progress.log(f"bench_lm/{c.variant}: {c.model} model on {env['backend']} ({env['device']}, "
               f"{env['cpu_cores']} CPU cores)")
  result = run_repeat(c, spec.seed, log=progress.log)
  log_metrics(0, None, flatten(result))
  progress.update(1, cache=result["cache_speedup"], lora=result["lora_train_speedup"])
  return env


_SCALARS = ("cache_speedup", "lora_train_speedup", "bitfit_train_speedup", "peak_flops_per_s",
            "decode_rows_identical", "decode_rows_near_tie", "load_avg_start", "load_avg_end")
_PER_METHOD = ("ms", "tokens_per_s", "trace_s", "compile_s")
_PER_TRAIN_METHOD = ("xla_flops", "trainable_params")


def flatten(result: dict) -> dict[str, float]:
  """A repeat's numbers as metric names: ``tokens_per_s/lora``, ``compile_s/full_ft``...

  A value the backend could not give (XLA cost analysis) is left out.
  """
  out = {k: result[k] for k in _SCALARS}
  for field in _PER_METHOD + _PER_TRAIN_METHOD:
    out.update({f"{field}/{m}": v for m, v in result[field].items()})
  return {k: float(v) for k, v in out.items() if v is not None}


def unflatten(seed: int, values: dict[str, float]) -> dict:
  """The inverse of :func:`flatten` (plus ``seed``; a value left out comes back ``None``)."""
  result: dict[str, Any] = {"seed": seed, **{k: values[k] for k in _SCALARS}}
  for field in _PER_METHOD:
    result[field] = {m: values[f"{field}/{m}"] for m in METHODS}
  for field in _PER_TRAIN_METHOD:
    result[field] = {m: values.get(f"{field}/{m}") for m in TRAIN_METHODS}
  return result


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
          id="cache_speedup",
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
          id="lora_train_speedup",
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
  plt = report_lib.plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
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
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(out: str, c, results: list[dict], doc: dict) -> None:
  """``report.md`` (all numbers) and ``throughput.png``."""
  plot_throughput(os.path.join(out, "throughput.png"), results)
  rep = doc["reported"]
  na = lambda v, fmt: "—" if v is None else format(v, fmt)
  per_method = lambda field: {m: [r[field][m] for r in results] for m in METHODS}
  params = rep["trainable_params"]
  lines = [
      f"# bench_lm ({c.variant})", "",
      f"Backend {rep['backend']} ({rep['device']}, {rep['cpu_cores']} CPU cores), JAX "
      f"{rep['jax_version']}; `{c.model}` model, random init. Training: one Adam step on "
      f"{c.batch_size} x {c.seq_len} tokens (trainable parameters: full {params['full_ft']:,.0f}, "
      f"LoRA rank {c.lora_rank} {params['lora']:,.0f}, BitFit {params['bitfit']:,.0f}). "
      f"Decoding: greedy, batch {c.decode_batch}, prompt {c.prompt_len}, {c.new_tokens} new "
      f"tokens. Medians of {c.timing_repeats} timed calls per program (round-robin) after "
      f"{c.warmup} warm-up call(s), over {len(results)} repeats (seeds {doc['seeds']}).", "",
      report_lib.claims_table(doc), "",
      report_lib.method_table(per_method("tokens_per_s"), "tokens / s"), "",
      "| method | tokens / call | ms / call (median) | tokens / s (median) | trace + lower (s) "
      "| XLA compile (s) |", "|---|---|---|---|---|---|"]
  for m in METHODS:
    lines.append(f"| {m}: {NAMES[m]} | {rep['tokens_per_call'][m]} | "
                 f"{rep['ms_per_call'][m]:.2f} | {rep['tokens_per_s'][m]:,.0f} | "
                 f"{rep['trace_s'][m]:.2f} | {rep['compile_s'][m]:.2f} |")
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
       na(xla["lora"] / xla["bitfit"] if xla["lora"] and xla["bitfit"] else None, ".3f")),
      ("XLA FLOPs per step, full_ft / lora", na(rep["xla_flops_ratio_full_over_lora"], ".3f")),
      *[(f"XLA FLOPs per step, {m}", na(xla[m], ".4g")) for m in TRAIN_METHODS],
      (f"matmul {c.matmul_size}^3 float32 FLOP/s (practical peak)",
       f"{rep['peak_flops_per_s'] / 1e9:.1f} G"),
      *[(f"FLOP utilisation, {m} step (XLA FLOPs)", na(util[m], ".2%")) for m in TRAIN_METHODS],
      ("decoded rows identical with and without the cache, per repeat",
       ", ".join(f"{v:.0f}/{c.decode_batch}" for v in rep["decode_rows_identical"])),
      (f"of the others, rows diverging after a float near-tie (top-2 gap < {TIE_GAP:g})",
       ", ".join(f"{v:.0f}" for v in rep["decode_rows_near_tie"])),
      ("1-minute load average, start -> end of each repeat",
       ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in rep["load_avg"])),
  ]
  lines += ["", "| quantity | value |", "|---|---|"]
  lines += [f"| {label} | {value} |" for label, value in quantities]
  lines += ["", "![tokens per second](throughput.png)", "", "Per repeat (ms per call):", "",
            "| seed | " + " | ".join(METHODS) + " | cache x | LoRA x | BitFit x | matmul GFLOP/s |",
            "|---|" + "---|" * (len(METHODS) + 4)]
  for r in results:
    lines.append(f"| {r['seed']} | " + " | ".join(f"{r['ms'][m]:.2f}" for m in METHODS) +
                 f" | {r['cache_speedup']:.3f} | {r['lora_train_speedup']:.3f} | "
                 f"{r['bitfit_train_speedup']:.3f} | {r['peak_flops_per_s'] / 1e9:.1f} |")
  lines.append("")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
