"""bench_lm's runs: validation, the five programs (training steps and decoders) compiled
per repeat, their interleaved timings, and the per-run protocol."""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import check, check_number
from jaxfl.models import lora, transformer
from sweeps.configs import common
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


def validate(c) -> None:
  """Check every field before anything runs or is written."""
  common.check(c)
  check(c.model in transformer.VARIANTS, "model", f"one of {sorted(transformer.VARIANTS)}",
        c.model)
  max_len = transformer.VARIANTS[c.model].max_len
  for field in ("batch_size", "seq_len", "lora_rank", "decode_batch",
                "prompt_len", "new_tokens", "timing_repeats", "matmul_size"):
    check_number(c[field], field, low=1, integer=True)
  check(c.seq_len <= max_len, "seq_len", f"at most the {c.model} model's max_len={max_len}",
        c.seq_len)
  check(c.prompt_len + c.new_tokens <= max_len, "new_tokens",
        f"prompt_len + new_tokens <= the {c.model} model's max_len={max_len} "
        f"(prompt_len={c.prompt_len})", c.new_tokens)
  # warmup >= 1: the first call checks the decoded tokens.
  check_number(c.warmup, "warmup", low=1, integer=True)
  for field in ("learning_rate", "min_cache_speedup", "min_lora_train_speedup"):
    check_number(c[field], field, low=0, strict=True)


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
