"""CoCoDC vs Streaming DiLoCo vs DiLoCo (see sweeps/configs/cocodc.py).

Methods (:mod:`jaxfl.algorithms.diloco`, :mod:`jaxfl.algorithms.streaming_diloco`):
``diloco`` (blocking: every ``H`` steps all workers wait for the full model's all-reduce),
``streaming_tau<τ>`` (fragments on a fixed staggered schedule, received ``τ`` steps after
their send and merged with ``alpha``-mixing) and ``cocodc_tau<τ>`` (adaptive fragment
choice, delay-compensated merge), one pair per overlap ``τ`` in ``overlaps``.

Tuning is part of the runs: every grid point is a run of its own on the tuning seeds
(``seed + 1000 + i``), named ``<method>_lr<lr>[_alpha<a>|_lam<l>]``; the reported run of a
method uses the grid point with the lowest mean final *validation* loss over its tuning
seeds, and its curves are measured on *test* windows (every other validation window of
the workers' domains: the tuning loss never sees them). The database holds both, so the
report rebuilds the tuning table.

Every run of a method family (``diloco``, ``streaming``, ``cocodc``) shares one compiled
program: the outer learning rate, ``alpha``/``lam0`` and ``τ`` are traced inputs, the
family's runs are one ``vmap``, and the tuning call and the reported call have the same
batch size (padded), so a family compiles once. The first ``execute`` of a family runs
its whole batch and keeps the rows in the context; the others read them. (A remote
backend prepares a context per worker, so each worker recomputes the batch it needs.)

The evaluated model is the mean of the workers' local parameters (after DiLoCo's outer
step all workers hold the global model, so DiLoCo is evaluated every ``H`` steps).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import os
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxfl.algorithms.diloco import DiLoCo
from jaxfl.algorithms.streaming_diloco import StreamingDiLoCo
from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import check
from jaxfl.local import ClientData
from jaxfl.models import transformer
from jaxfl.planners import fragments as frag
from jaxfl.sim import WAN, tree_bytes
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.experiments import lm_pretrain
from sweeps.sweep import RunSpec

FAMILIES = ("diloco", "streaming", "cocodc")
NAMES = {"diloco": "DiLoCo (blocking)", "streaming": "Streaming DiLoCo", "cocodc": "CoCoDC"}
KNOB = {"streaming": "alpha", "cocodc": "lam"}  # the second tuned hyperparameter (run names)
KNOB_METRIC = {"streaming": "alpha", "cocodc": "lam0"}  # ... and its logged metric
TUNING_OFFSET = 1000
KEY_MODEL, KEY_RUN = range(2)
PAPER = ("CoCoDC reduces the training steps to a comparable perplexity by up to 21.0% vs "
         "Streaming DiLoCo (arXiv 2504.17672)")


class Point(NamedTuple):
  """One run: a method family's hyperparameters and seed."""

  family: str
  overlap: int  # τ (0 for DiLoCo)
  outer_lr: float
  knob: float  # alpha (streaming), lam0 (cocodc), 0 (diloco)
  seed: int


def seeds(c) -> list[int]:
  return [c.seed + i for i in range(c.num_seeds)]


def tuning_seeds(c) -> list[int]:
  return [c.seed + TUNING_OFFSET + i for i in range(c.num_tuning_seeds)]


def _pos_int(v, low: int = 1) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= low


def validate(c) -> None:
  """Every field, before anything runs or is written."""
  check(_pos_int(c.seed, 0), "seed", "a non-negative integer", c.seed)
  for f in ("num_seeds", "num_tuning_seeds", "num_layers", "d_model", "num_heads", "d_ff",
            "seq_len", "num_workers", "windows_per_worker", "eval_windows", "batch_size",
            "num_steps", "inner_steps", "num_fragments", "eval_every"):
    check(_pos_int(c[f]), f, "a positive integer", c[f])
  check(_pos_int(c.warmup_steps, 0), "warmup_steps", "a non-negative integer", c.warmup_steps)
  check(c.d_model % c.num_heads == 0, "num_heads", f"a divisor of d_model={c.d_model}",
        c.num_heads)
  n_domains = len(corpus_lib.CLIENT_DOMAINS)
  check(c.num_workers <= n_domains, "num_workers",
        f"at most {n_domains} (one stdlib domain each)", c.num_workers)
  check(c.eval_windows >= 2, "eval_windows", "at least 2 (split into tuning and test)",
        c.eval_windows)
  check(c.inner_steps % c.eval_every == 0, "eval_every",
        f"a divisor of inner_steps={c.inner_steps}", c.eval_every)
  check(c.num_steps % c.inner_steps == 0, "num_steps",
        f"a multiple of inner_steps={c.inner_steps}", c.num_steps)
  check(c.num_fragments <= min(c.num_layers + 2, c.inner_steps), "num_fragments",
        f"at most min(num_layers + 2, inner_steps) = {min(c.num_layers + 2, c.inner_steps)}",
        c.num_fragments)
  check(c.fragment_pattern in ("sequential", "strided"), "fragment_pattern",
        "'sequential' or 'strided'", c.fragment_pattern)
  overlaps = tuple(c.overlaps)
  check(len(overlaps) >= 1 and len(set(overlaps)) == len(overlaps) and
        all(_pos_int(t) and t < c.inner_steps for t in overlaps), "overlaps",
        f"distinct integers in [1, inner_steps={c.inner_steps})", overlaps)
  for f in ("inner_lr", "bandwidth", "step_time"):
    check(math.isfinite(c[f]) and c[f] > 0, f, "a positive number", c[f])
  for f in ("weight_decay", "latency"):
    check(math.isfinite(c[f]) and c[f] >= 0, f, "a non-negative number", c[f])
  check(math.isfinite(c.clip_norm) and c.clip_norm > 0, "clip_norm", "a positive number",
        c.clip_norm)
  check(0 <= c.outer_momentum < 1, "outer_momentum", "a number in [0, 1)", c.outer_momentum)
  for f, ok, what in (("outer_lr_grid", lambda v: math.isfinite(v) and v > 0, "positive"),
                      ("alpha_grid", lambda v: 0 <= v <= 1, "in [0, 1]"),
                      ("lam0_grid", lambda v: math.isfinite(v) and v >= 0, "non-negative")):
    grid = tuple(c[f])
    check(len(grid) >= 1 and len(set(grid)) == len(grid) and
          all(isinstance(v, (int, float)) and ok(v) for v in grid), f,
          f"distinct {what} numbers", grid)
  check(0 <= c.min_step_reduction < 1, "min_step_reduction", "a fraction in [0, 1)",
        c.min_step_reduction)


# ----------------------------------------------------------------------------- runs


def grid(c, family: str) -> list[tuple[float, float]]:
  """``(outer_lr, knob)`` points a family is tuned over."""
  lrs = [float(v) for v in c.outer_lr_grid]
  if family == "diloco":
    return [(lr, 0.0) for lr in lrs]
  knobs = c.alpha_grid if family == "streaming" else c.lam0_grid
  return [(lr, float(k)) for lr in lrs for k in knobs]


def overlaps(c, family: str) -> list[int]:
  return [0] if family == "diloco" else [int(t) for t in c.overlaps]


def method_name(family: str, overlap: int) -> str:
  return family if family == "diloco" else f"{family}_tau{overlap}"


def point_name(family: str, overlap: int, lr: float, knob: float) -> str:
  name = f"{method_name(family, overlap)}_lr{lr:g}"
  return name if family == "diloco" else f"{name}_{KNOB[family]}{knob:g}"


def tuning_points(c, family: str) -> dict[str, list[Point]]:
  """``{run method: points}`` of a family's grid, one point per tuning seed."""
  return {point_name(family, t, lr, k): [Point(family, t, lr, k, s) for s in tuning_seeds(c)]
          for t in overlaps(c, family) for lr, k in grid(c, family)}


def reported_methods(c) -> list[str]:
  return [method_name(f, t) for f in FAMILIES for t in overlaps(c, f)]


def run_specs(c) -> list[RunSpec]:
  """Tuning runs first (a family's reported runs need its tuned point), then the reported."""
  tuning = [RunSpec(m, p.seed) for f in FAMILIES for m, pts in tuning_points(c, f).items()
            for p in pts]
  return tuning + [RunSpec(m, s) for s in seeds(c) for m in reported_methods(c)]


def _family_of(method: str) -> str:
  return method.split("_", 1)[0]


def rounds(c, spec: RunSpec) -> int:
  """Evaluation rows a run logs (the initial model's included)."""
  every = c.inner_steps if _family_of(spec.method) == "diloco" else c.eval_every
  return c.num_steps // every + 1


# ----------------------------------------------------------------------------- setup


class Context:
  """Data, each family's compiled program, tuned points and computed rows."""

  def __init__(self, data: ClientData, tune: tuple, test: tuple, domains: tuple[str, ...],
               num_params: int):
    self.data = data
    self.num_params = num_params
    self.tune = tune  # validation windows used for tuning
    self.test = test  # the other validation windows: reported curves
    self.domains = domains
    self.rows: dict[tuple[str, int], list] = {}  # (run method, seed) -> rows
    self.chosen: dict[str, tuple[float, float]] = {}  # reported method -> (lr, knob)
    self.compiled: set[str] = set()
    self.params0: dict[int, Any] = {}  # seed -> initial model


def model_config(c) -> transformer.LMConfig:
  return transformer.LMConfig(num_layers=c.num_layers, d_model=c.d_model,
                              num_heads=c.num_heads, d_ff=c.d_ff, max_len=c.seq_len)


def prepare(c) -> Context:
  corpus = lm_pretrain.load_corpus(c)
  shards = corpus_lib.client_domains(c.num_workers)
  # Equal counts: workers draw batches uniformly from their own windows.
  data = corpus_lib.client_windows(corpus, c.num_workers, c.seq_len, c.windows_per_worker,
                                   equal=True)
  vx, vy = corpus_lib.domain_windows(corpus, [s.domain for s in shards], c.seq_len,
                                     c.eval_windows)
  return Context(data, (vx[0::2], vy[0::2]), (vx[1::2], vy[1::2]),
                 tuple(s.domain for s in shards), transformer.num_params(_shapes(c)))


def inner_optimizer(c) -> optax.GradientTransformation:
  """AdamW (betas 0.9/0.95) with linear warmup and cosine decay to 10%, after clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, c.inner_lr, c.warmup_steps, max(c.num_steps, c.warmup_steps + 1),
      end_value=0.1 * c.inner_lr)
  return optax.chain(optax.clip_by_global_norm(c.clip_norm),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=c.weight_decay))


def _shapes(c):
  return jax.eval_shape(lambda: transformer.init(model_config(c), jax.random.key(0)))


def _labels(c, shapes=None):
  units = frag.fragment_units(c.num_layers + 2, c.num_fragments, c.fragment_pattern)
  return frag.fragment_labels(_shapes(c) if shapes is None else shapes, units)


def _wan(c) -> WAN:
  return WAN(bandwidth=float(c.bandwidth), latency=float(c.latency))


def _algorithm(c, family: str, outer_lr, knob, overlap, labels=None):
  """The family's engine; ``outer_lr``, ``knob`` and ``overlap`` may be traced."""
  config = model_config(c)
  loss_fn = lambda p, x, y: transformer.lm_loss(config, p, x, y)
  outer = optax.sgd(outer_lr, momentum=c.outer_momentum, nesterov=True)
  common = dict(num_workers=c.num_workers, inner_steps=c.inner_steps,
                batch_size=c.batch_size, step_time=float(c.step_time), wan=_wan(c))
  if family == "diloco":
    return DiLoCo(loss_fn, inner_optimizer(c), outer, **common)
  knobs = dict(alpha=knob) if family == "streaming" else dict(lam0=knob)
  return StreamingDiLoCo(loss_fn, inner_optimizer(c), outer,
                         labels=_labels(c) if labels is None else labels,
                         num_fragments=c.num_fragments, overlap=overlap, mode=family,
                         **knobs, **common)


@functools.lru_cache(maxsize=16)
def _program(c_json: str, family: str):
  """``run(keys [K], params0 [K], lr [K], knob [K], overlap [K], data, windows)`` for one
  family: ``(sim_time, loss)``, each ``[K, E + 1]`` (the loss on ``windows`` at the start
  and after each of ``E`` evaluation intervals), compiled once per config and family.

  The initial parameters are an input: initialisers compile slowly (threefry per
  parameter) and every family shares them.
  """
  c = ml_collections.ConfigDict(json.loads(c_json))
  config = model_config(c)
  labels = _labels(c)
  every = 1 if family == "diloco" else c.eval_every  # DiLoCo: one round per evaluation
  num_evals = c.num_steps // (c.inner_steps if family == "diloco" else c.eval_every)

  def run(keys, params0, lr, knob, overlap, data, windows):
    build = lambda lr_, knob_, tau: _algorithm(c, family, lr_, knob_, tau, labels)

    def init(key, p0, lr_, knob_, tau):
      return build(lr_, knob_, tau).init(p0, jax.random.fold_in(key, KEY_RUN))

    def advance(state, lr_, knob_, tau):
      alg = build(lr_, knob_, tau)
      return alg.round(state, data)[0]

    def evaluate(state):
      model = (state.params if family == "diloco" else
               jax.tree.map(lambda w: jnp.mean(w, axis=0), state.workers))
      return transformer.lm_loss(config, model, *windows)

    # The step loop is outside the vmap over runs, so the step is traced (batched) once.
    def chunk(states, _):
      states, _ = jax.lax.scan(
          lambda s, _: (jax.vmap(advance)(s, lr, knob, overlap), None), states, None,
          length=every)
      return states, (states.sim_time, jax.vmap(evaluate)(states))

    states = jax.vmap(init)(keys, params0, lr, knob, overlap)
    loss0 = jax.vmap(evaluate)(states)
    _, (times, loss) = jax.lax.scan(chunk, states, None, length=num_evals)
    cat = lambda first, rest: jnp.concatenate([first[:, None], rest.T], axis=1)
    return cat(states.sim_time, times), cat(loss0, loss)

  return jax.jit(run)


def batch_size(c, family: str) -> int:
  """Runs per call of a family's program: the larger of its tuning and reported batches."""
  n_tune = len(overlaps(c, family)) * len(grid(c, family)) * c.num_tuning_seeds
  return max(n_tune, len(overlaps(c, family)) * c.num_seeds)


def _initial_params(c, ctx: Context, seed: int):
  """Seed's initial model (cached: every family and method of a seed start from it)."""
  if seed not in ctx.params0:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), KEY_MODEL)
    ctx.params0[seed] = transformer.init(model_config(c), key)
  return ctx.params0[seed]


def _run_points(c, ctx: Context, family: str, points: list[Point], windows, log) -> list[dict]:
  """Run ``points`` of one family as one vmapped call (padded to :func:`batch_size`),
  evaluating on ``windows``; returns each point's ``{steps, sim_time, loss}``."""
  k = batch_size(c, family)
  padded = points + [points[0]] * (k - len(points))
  seeds_ = np.asarray([p.seed for p in padded], np.uint32)
  keys = jax.vmap(jax.random.PRNGKey)(seeds_)
  params0 = jax.tree.map(lambda *xs: jnp.stack(xs),
                         *[_initial_params(c, ctx, int(s)) for s in seeds_])
  f32 = lambda name: np.asarray([getattr(p, name) for p in padded], np.float32)
  program = _program(c.to_json(), family)
  log(f"{family}: {len(points)} runs x {c.num_steps} steps as one vmapped call"
      + ("" if family in ctx.compiled else " (compiling it first)"))
  ctx.compiled.add(family)
  times, loss = jax.device_get(program(
      keys, params0, f32("outer_lr"), f32("knob"),
      np.asarray([p.overlap for p in padded], np.int32), jax.tree.map(jnp.asarray, ctx.data),
      windows))
  every = c.inner_steps if family == "diloco" else c.eval_every
  steps = [i * every for i in range(times.shape[1])]
  return [dict(steps=steps, sim_time=times[i], loss=loss[i]) for i in range(len(points))]


def _tune(c, ctx: Context, family: str, log) -> None:
  """Run the family's grid on the tuning seeds; choose each reported method's point."""
  if all(method_name(family, t) in ctx.chosen for t in overlaps(c, family)):
    return
  named = tuning_points(c, family)
  flat = [(m, p) for m, pts in named.items() for p in pts]
  results = _run_points(c, ctx, family, [p for _, p in flat], ctx.tune, log)
  score: dict[str, list[float]] = {}
  for (m, p), r in zip(flat, results, strict=True):
    ctx.rows[(m, p.seed)] = _rows(r, p, "val_loss")
    score.setdefault(m, []).append(float(r["loss"][-1]))
  for t in overlaps(c, family):
    options = [(lr, k) for lr, k in grid(c, family)]
    mean_val = lambda lk, t=t: _mean_or_inf(score[point_name(family, t, *lk)])
    best = min(options, key=mean_val)  # ties: the earlier grid point
    ctx.chosen[method_name(family, t)] = best
    log(f"{method_name(family, t)}: tuned outer lr {best[0]:g}"
        + ("" if family == "diloco" else f", {KNOB[family]} {best[1]:g}")
        + f" (validation loss {mean_val(best):.4f})")


def _mean_or_inf(xs) -> float:
  """Mean validation loss; a diverged run makes its grid point never chosen."""
  mean = claims_lib.mean(xs, "lower")
  return math.inf if mean is None else mean


def _rows(result: dict, p: Point, name: str) -> list[tuple]:
  """A run's ``(step, sim_time, {name: loss, ...})`` rows; the last carries its settings."""
  rows = []
  n = len(result["steps"])
  for i, step in enumerate(result["steps"]):
    values = {name: float(result["loss"][i])}
    if i == n - 1:
      values.update(outer_lr=p.outer_lr, overlap=float(p.overlap))
      if p.family != "diloco":
        values[KNOB_METRIC[p.family]] = p.knob
    rows.append((step, float(result["sim_time"][i]), values))
  return rows


def _report_points(c, ctx: Context, family: str, log) -> None:
  """The family's reported runs at its tuned points (tuning it first if needed)."""
  _tune(c, ctx, family, log)
  points = [Point(family, t, *ctx.chosen[method_name(family, t)], s)
            for t in overlaps(c, family) for s in seeds(c)]
  if all((method_name(family, p.overlap), p.seed) in ctx.rows for p in points):
    return
  for p, r in zip(points, _run_points(c, ctx, family, points, ctx.test, log), strict=True):
    ctx.rows[(method_name(family, p.overlap), p.seed)] = _rows(r, p, "eval_loss")


def compute_all(c, ctx: Context, log=print) -> None:
  """Every family's tuning grid and then its reported runs, the families in parallel
  threads (tracing takes turns; XLA compiles and runs release the GIL, so the families
  share the cores). Each program's results do not depend on the threading."""
  for s in seeds(c) + tuning_seeds(c):  # before the threads, which share them
    _initial_params(c, ctx, s)
  with concurrent.futures.ThreadPoolExecutor(len(FAMILIES)) as pool:
    for future in [pool.submit(_report_points, c, ctx, f, log) for f in FAMILIES]:
      future.result()


def execute(c, spec: RunSpec, ctx: Context, run_dir: str, log_metrics, progress) -> dict:
  """Log one run's rows; the first call computes every run (minutes; no checkpoints: a
  killed launch recomputes them)."""
  del run_dir
  if (spec.method, spec.seed) not in ctx.rows:
    compute_all(c, ctx, progress.log)
  rows = ctx.rows[(spec.method, spec.seed)]
  for step, sim_time, values in rows:
    if not all(math.isfinite(v) for v in values.values()):
      raise FloatingPointError(f"{spec.method} seed {spec.seed}: loss not finite at step {step}")
    log_metrics(step, sim_time, values)
  progress.update(len(rows), sim_time=rows[-1][1],
                  loss=next(iter(rows[-1][2].values())))
  return {"params": ctx.num_params, "domains": list(ctx.domains)}


# ----------------------------------------------------------------------------- analysis


def first_reach(xs, losses, target: float) -> float | None:
  """The first ``x`` at which the piecewise-linear curve ``(xs, losses)`` is at or below
  ``target`` (``None`` if it never is).

  >>> first_reach([0, 10, 20], [3.0, 2.0, 1.0], 1.5)
  15.0
  >>> first_reach([0, 10], [3.0, 2.0], 1.0) is None
  True
  """
  xs = np.asarray(xs, float)
  ys = np.asarray(losses, float)
  hit = np.flatnonzero(ys <= target)
  if hit.size == 0:
    return None
  i = int(hit[0])
  if i == 0:
    return float(xs[0])
  x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
  return float(x0 + (x1 - x0) * (y0 - target) / (y0 - y1))


def fragment_comm_seconds(c) -> tuple[float, float]:
  """Simulated seconds of the full model's all-reduce and of one fragment's (mean)."""
  shapes = _shapes(c)
  full = _wan(c).allreduce_time(tree_bytes(shapes), c.num_workers)
  engine = _algorithm(c, "streaming", 1.0, 0.5, int(c.overlaps[0]), _labels(c, shapes))
  return full, float(np.mean(engine.fragment_comm_time(shapes)))


# ----------------------------------------------------------------------------- report


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and the plots, from the database alone."""
  series = {m: db.series(c.experiment, m, "eval_loss", config_hash=digest)
            for m in reported_methods(c)}
  final = {n: db.final_values(c.experiment, n, config_hash=digest)
           for n in ("eval_loss", "val_loss", "outer_lr", "alpha", "lam0")}

  def curve(m, s):
    steps, times, values = series[m].get(s, ([], [], []))
    return np.asarray(steps, float), np.asarray(times, float), np.asarray(values, float)

  def per_seed_final(m):
    return [final["eval_loss"].get(m, {}).get(s) for s in seeds(c)]

  long_tau = max(int(t) for t in c.overlaps)
  reduction, steps_to, time_to = {}, {}, {}
  for t in c.overlaps:
    s_m, c_m = method_name("streaming", t), method_name("cocodc", t)
    red, st_s, st_c = [], [], []
    for s in seeds(c):
      xs_s, _, ys_s = curve(s_m, s)
      xs_c, _, ys_c = curve(c_m, s)
      target = ys_s[-1] if ys_s.size else None
      a = None if target is None or not ys_c.size else first_reach(xs_c, ys_c, target)
      b = None if target is None else first_reach(xs_s, ys_s, target)
      st_c.append(a)
      st_s.append(b)
      red.append(None if a is None or not b else 1.0 - a / b)
    reduction[t], steps_to[(t, "cocodc")], steps_to[(t, "streaming")] = red, st_c, st_s
  c_long = method_name("cocodc", long_tau)
  for m in (c_long, "diloco"):
    time_to[m] = []
    for s in seeds(c):
      _, _, ys_d = curve("diloco", s)
      _, ts, ys = curve(m, s)
      ok = ys_d.size and ys.size
      time_to[m].append(first_reach(ts, ys, ys_d[-1]) if ok else None)

  claims = [
      claims_lib.claim(
          id="steps_to_streaming_loss_long_tau",
          statement=(f"At the long overlap τ = {long_tau}, CoCoDC reaches Streaming DiLoCo's "
                     f"final evaluation loss in at least {c.min_step_reduction:.0%} fewer steps "
                     "(mean over seeds)"),
          paper=PAPER, metric="step_reduction_vs_streaming", better="higher",
          method="cocodc", threshold=c.min_step_reduction, aggregate="mean",
          per_seed={"cocodc": reduction[long_tau]},
          steps_cocodc=steps_to[(long_tau, "cocodc")],
          steps_streaming=steps_to[(long_tau, "streaming")], paper_reduction=0.21),
      claims_lib.claim(
          id="final_loss_vs_streaming_long_tau",
          statement=(f"At the long overlap τ = {long_tau}, CoCoDC's final evaluation loss is "
                     "no higher than Streaming DiLoCo's (mean over seeds)"),
          paper=PAPER, metric="final_eval_loss", better="lower", method="cocodc",
          baseline="streaming", aggregate="mean",
          per_seed={"cocodc": per_seed_final(c_long),
                    "streaming": per_seed_final(method_name("streaming", long_tau))}),
      claims_lib.claim(
          id="time_to_diloco_loss",
          statement=(f"CoCoDC (τ = {long_tau}) reaches blocking DiLoCo's final evaluation loss "
                     "in less simulated wall-clock time than DiLoCo (mean over seeds)"),
          paper=("CoCoDC overlaps communication with computation, so it beats blocking DiLoCo "
                 "in wall-clock time (arXiv 2504.17672)"),
          metric="sim_time_to_diloco_final_loss", better="lower", method="cocodc",
          baseline="diloco", aggregate="mean",
          per_seed={"cocodc": time_to[c_long], "diloco": time_to["diloco"]}),
  ]
  # A strict "sooner": equal times do not hold.
  cl = claims[-1]
  cl["holds"] = bool(cl["holds"] and cl["value"] is not None and
                     cl["value"] < cl["baseline_value"])
  tuning = _tuning_table(c, final)
  doc = claims_lib.write_claims(
      os.path.join(out, "claims.json"), experiment=c.experiment, variant=c.variant,
      seeds=seeds(c), claims=claims,
      reported=dict(final_eval_loss={m: per_seed_final(m) for m in reported_methods(c)},
                    step_reduction={str(t): reduction[t] for t in c.overlaps},
                    tuned={m: {n: final[n].get(m, {}).get(seeds(c)[0])
                               for n in ("outer_lr", "alpha", "lam0")}
                           for m in reported_methods(c)},
                    tuning_val_loss=tuning))
  write_report(out, c, doc, series, reduction, per_seed_final, tuning)
  return doc


def _tuning_table(c, final) -> dict[str, float | None]:
  """``{grid run method: mean final validation loss over the tuning seeds}``."""
  out = {}
  for f in FAMILIES:
    for m in tuning_points(c, f):
      vals = [final["val_loss"].get(m, {}).get(s) for s in tuning_seeds(c)]
      out[m] = claims_lib.mean(vals, "lower")
  return out


def _mean_curve(series_m, use_time: bool):
  by_seed = list(series_m.values())
  if not by_seed:
    return None
  n = min(len(v[0]) for v in by_seed)
  x = np.array([v[1 if use_time else 0][:n] for v in by_seed], float).mean(0)
  ys = np.array([v[2][:n] for v in by_seed], float)
  return x, ys


def write_report(out, c, doc, series, reduction, per_seed_final, tuning) -> None:
  plt = report_lib.plt
  taus = [int(t) for t in c.overlaps]
  fig, axes = plt.subplots(2, len(taus), figsize=(5.5 * len(taus), 8), squeeze=False)
  for j, t in enumerate(taus):
    for row, use_time in enumerate((False, True)):
      ax = axes[row, j]
      for i, m in enumerate(("diloco", method_name("streaming", t), method_name("cocodc", t))):
        got = _mean_curve(series[m], use_time)
        if got is None:
          continue
        x, ys = got
        ax.plot(x, ys.mean(0), color=f"C{i}", label=NAMES[_family_of(m)])
        ax.fill_between(x, ys.min(0), ys.max(0), color=f"C{i}", alpha=0.15, lw=0)
      ax.set(xlabel="simulated time (s)" if use_time else "inner step",
             ylabel="evaluation loss (nats/byte)", title=f"τ = {t}")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=8)
      lo = [np.nanmin(_mean_curve(series[m], use_time)[1].mean(0)) for m in series
            if series[m]]
      if lo:  # the early steps' loss dwarfs the differences: zoom on the end
        ax.set_ylim(min(lo) - 0.05, min(lo) + 1.0)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "curves.png"), dpi=110)
  plt.close(fig)

  gap = {t: [None if a is None or b is None else a - b for a, b in zip(
      per_seed_final(method_name("cocodc", t)), per_seed_final(method_name("streaming", t)),
      strict=True)] for t in taus}
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  means = [claims_lib.mean(gap[t], "lower") for t in taus]
  sds = [statistics.stdev([v for v in gap[t] if v is not None])
         if sum(v is not None for v in gap[t]) > 1 else 0.0 for t in taus]
  ax1.errorbar(taus, [np.nan if m is None else m for m in means], yerr=sds, marker="o",
               capsize=3)
  ax1.axhline(0, color="k", lw=0.8)
  ax1.set(xlabel="overlap τ (steps)", ylabel="final eval loss: CoCoDC − Streaming",
          title="reported seeds (mean ± std)")
  for j, t in enumerate(taus):
    lrs, gaps = _grid_gaps(c, tuning, t)
    ax2.plot(lrs, gaps, marker="o", color=f"C{j}", label=f"τ = {t}")
  ax2.axhline(0, color="k", lw=0.8)
  ax2.set(xlabel="outer learning rate", ylabel="final val loss: CoCoDC − Streaming",
          title="tuning seeds (each method's best knob per lr)")
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "gap.png"), dpi=110)
  plt.close(fig)

  fmt = report_lib._fmt
  tuned = doc["reported"]["tuned"]
  full_s, frag_s = fragment_comm_seconds(c)
  rows = []
  for m in reported_methods(c):
    f = _family_of(m)
    knob = "—" if f == "diloco" else f"{KNOB[f]} {fmt(tuned[m][KNOB_METRIC[f]])}"
    times = [v[1][-1] for v in series[m].values() if v[1]]
    rows.append(f"| {m} | {fmt(tuned[m]['outer_lr'])} | {knob} | "
                f"{report_lib.mean_std(per_seed_final(m))} | "
                f"{fmt(statistics.fmean(times) if times else None)} |")
  red_rows = [f"| {t} | {report_lib.mean_std(reduction[t])} | "
              + " | ".join(fmt(v) for v in reduction[t]) + " |" for t in taus]
  width = max(len(c.alpha_grid), len(c.lam0_grid))
  grid_rows = []
  for f in ("streaming", "cocodc"):
    knobs = c.alpha_grid if f == "streaming" else c.lam0_grid
    for t in taus:
      for lr in c.outer_lr_grid:
        cells = [f"{KNOB[f]} {k:g}: {fmt(tuning.get(point_name(f, t, float(lr), float(k))))}"
                 for k in knobs] + [""] * (width - len(knobs))
        grid_rows.append(f"| {NAMES[f]} | {t} | {lr:g} | " + " | ".join(cells) + " |")
  dil = " · ".join(f"lr {lr:g}: {fmt(tuning.get(point_name('diloco', 0, float(lr), 0.0)))}"
                   for lr in c.outer_lr_grid)
  domains = [s.domain for s in corpus_lib.client_domains(c.num_workers)]
  lines = [
      f"# cocodc ({c.variant})", "", report_lib.claims_table(doc), "",
      "Claims compare means over the reported seeds "
      f"{seeds(c)}; each method's hyperparameters were chosen on the tuning seeds "
      f"{tuning_seeds(c)} by validation loss on windows disjoint from the evaluation windows.",
      "", "| method | outer lr | knob | final eval loss (mean ± std) | simulated time (s) |",
      "|---|---|---|---|---|", *rows, "",
      "Steps to Streaming DiLoCo's final loss, CoCoDC's reduction per seed "
      "(1 − steps_CoCoDC / steps_Streaming; — where CoCoDC never reaches it):", "",
      "| τ | mean ± std | " + " | ".join(f"seed {s}" for s in seeds(c)) + " |",
      "|---|---|" + "---|" * len(seeds(c)), *red_rows, "",
      "![curves](curves.png)", "", "![gap](gap.png)", "",
      "## Tuning grid (mean final validation loss over the tuning seeds)", "",
      "| method | τ | outer lr | " + " | ".join(["knob: val loss"] * width) + " |",
      "|---|---|---|" + "---|" * width, *grid_rows, "", f"DiLoCo: {dil}.", "",
      _regime_text(c, tuning, gap), "",
      "## Setup", "",
      f"{c.num_workers} workers, one stdlib domain each ({', '.join(domains)})"
      f"; a {c.num_layers}-layer byte-level transformer (d = {c.d_model}) from scratch; "
      f"{c.num_steps} inner AdamW steps of {c.batch_size} windows of {c.seq_len} bytes; "
      f"H = {c.inner_steps}, {c.num_fragments} {c.fragment_pattern} fragments; "
      f"simulated step {c.step_time:g} s, full all-reduce {full_s:.2f} s, a fragment's "
      f"{frag_s:.2f} s (bandwidth {c.bandwidth:g} B/s, latency {c.latency:g} s).", ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))


def _grid_gaps(c, tuning, t) -> tuple[list[float], list[float]]:
  """Per outer lr: best CoCoDC val loss − best Streaming val loss (over their knobs)."""
  lrs, gaps = [], []
  for lr in c.outer_lr_grid:
    best = {}
    for f, knobs in (("streaming", c.alpha_grid), ("cocodc", c.lam0_grid)):
      vals = [tuning.get(point_name(f, t, float(lr), float(k))) for k in knobs]
      vals = [v for v in vals if v is not None]
      best[f] = min(vals) if vals else None
    if best["streaming"] is not None and best["cocodc"] is not None:
      lrs.append(float(lr))
      gaps.append(best["cocodc"] - best["streaming"])
  return lrs, gaps


def _regime_text(c, tuning, gap) -> str:
  """Where CoCoDC helps and where it does not, in numbers from the tuning grid."""
  lines = ["## Regime", ""]
  for t in (int(t) for t in c.overlaps):
    lrs, gaps = _grid_gaps(c, tuning, t)
    parts = [f"lr {lr:g}: {g:+.4f}" for lr, g in zip(lrs, gaps, strict=True)]
    g = claims_lib.mean(gap[t], "lower")
    lines.append(f"- τ = {t}: CoCoDC − Streaming final validation loss by outer lr (tuning "
                 f"seeds) {', '.join(parts) or '—'}; on the reported seeds "
                 f"{'—' if g is None else f'{g:+.4f}'} (negative: CoCoDC lower).")
  def best_per_knob(f, t):
    knobs = c.alpha_grid if f == "streaming" else c.lam0_grid
    return {float(k): min((v for v in (tuning.get(point_name(f, t, float(lr), float(k)))
                                       for lr in c.outer_lr_grid) if v is not None),
                          default=None) for k in knobs}

  for t in (int(t) for t in c.overlaps):
    s_best, c_best = best_per_knob("streaming", t), best_per_knob("cocodc", t)
    for f, best, name in (("streaming", s_best, "alpha"), ("cocodc", c_best, "lam0")):
      lines.append(f"- {NAMES[f]}, τ = {t}: best validation loss (over outer lrs) per {name}: "
                   + ", ".join(f"{k:g} → {report_lib._fmt(v)}" for k, v in best.items()))
    ours = min((v for v in c_best.values() if v is not None), default=None)
    if ours is not None:
      # CoCoDC has no mixing: comparing it with each alpha separates the damping that
      # alpha-mixing adds from the delay compensation itself.
      lines.append(f"- τ = {t}: CoCoDC's best minus Streaming DiLoCo's best at each alpha: "
                   + ", ".join(f"alpha {k:g}: {ours - v:+.4f}" for k, v in s_best.items()
                               if v is not None))
  return "\n".join(lines)
