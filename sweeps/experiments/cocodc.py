"""CoCoDC vs Streaming DiLoCo vs DiLoCo (see sweeps/configs/cocodc.py).

Methods (:mod:`jaxfl.algorithms.diloco`, :mod:`jaxfl.algorithms.streaming_diloco`):
``diloco`` (blocking: every ``H`` steps all workers wait for the full model's all-reduce),
``streaming_tau<τ>`` (fragments on a fixed staggered schedule, received ``τ`` steps after
their send and merged with ``alpha``-mixing) and ``cocodc_tau<τ>`` (adaptive fragment
choice, delay-compensated merge), one pair per overlap ``τ`` in ``overlaps``.

The three families (``diloco``, ``streaming``, ``cocodc``) are :mod:`sweeps.families`
families: the outer learning rate and ``alpha``/``lam0`` are the tuning grid (traced),
``τ`` and the initial model are each run's inputs, and a family's runs are one ``vmap``
compiled once. Every grid point runs on the tuning seeds (``seed + 1000 + i``) as the run
``<method>[outer_lr=..,alpha=..]``; the reported run of a method uses the point with the
lowest mean final loss on *validation* windows over its tuning seeds, and its curves are
measured on *test* windows (every other validation window of the workers' domains: the
tuning loss never sees them). Both log ``eval_loss``, each on its own windows; the
database holds both, so the report rebuilds the tuning table.

The evaluated model is the mean of the workers' local parameters (after DiLoCo's outer
step all workers hold the global model, so DiLoCo is evaluated every ``H`` steps).
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

import jax
import jax.numpy as jnp
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
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.experiments import lm_pretrain
from sweeps.families import seeds, tuning_seeds

FAMILIES = ("diloco", "streaming", "cocodc")
NAMES = {"diloco": "DiLoCo (blocking)", "streaming": "Streaming DiLoCo", "cocodc": "CoCoDC"}
KNOB = {"streaming": "alpha", "cocodc": "lam"}  # the second tuned hyperparameter (run names)
KNOB_METRIC = {"streaming": "alpha", "cocodc": "lam0"}  # ... and its logged metric
KEY_MODEL, KEY_RUN = range(2)
PAPER = ("CoCoDC reduces the training steps to a comparable perplexity by up to 21.0% vs "
         "Streaming DiLoCo (arXiv 2504.17672)")


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


def grid(c, family: str) -> list[dict[str, float]]:
  """The points a family is tuned over: ``outer_lr`` (and ``alpha`` or ``lam0``)."""
  lrs = [float(v) for v in c.outer_lr_grid]
  if family == "diloco":
    return [{"outer_lr": lr} for lr in lrs]
  knobs = c.alpha_grid if family == "streaming" else c.lam0_grid
  return [{"outer_lr": lr, KNOB_METRIC[family]: float(k)} for lr in lrs for k in knobs]


def overlaps(c, family: str) -> list[int]:
  return [0] if family == "diloco" else [int(t) for t in c.overlaps]


def method_name(family: str, overlap: int) -> str:
  return family if family == "diloco" else f"{family}_tau{overlap}"


def point_name(family: str, overlap: int, lr: float, knob: float = 0.0) -> str:
  """A tuning run's name: ``cocodc_tau12[outer_lr=0.7,lam0=0.5]``."""
  point = {"outer_lr": lr} if family == "diloco" else {"outer_lr": lr, KNOB_METRIC[family]: knob}
  return families_lib.point_name(method_name(family, overlap), point)


def reported_methods(c) -> list[str]:
  return [method_name(f, t) for f in FAMILIES for t in overlaps(c, f)]


def _family_of(method: str) -> str:
  return method.split("_", 1)[0]


# ----------------------------------------------------------------------------- setup


class Context:
  """Data, the validation and test windows, and each seed's initial model."""

  def __init__(self, data: ClientData, tune: tuple, test: tuple, domains: tuple[str, ...],
               num_params: int):
    self.data = data
    self.num_params = num_params
    self.tune = tune  # validation windows used for tuning
    self.test = test  # the other validation windows: reported curves
    self.domains = domains
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


def _simulate_fn(c, ctx: Context, family: str):
  """``simulate(key, (params0, overlap, windows), {outer_lr, alpha|lam0})``: the run's
  ``(sim_time, {"eval_loss": loss})``, each ``[E + 1]`` (the loss on ``windows`` at the
  start and after each of ``E`` evaluation intervals).

  The initial parameters are an input: initialisers compile slowly (threefry per
  parameter) and every family of a seed shares them.
  """
  config = model_config(c)
  labels = _labels(c)
  every = 1 if family == "diloco" else c.eval_every  # DiLoCo: one round per evaluation
  num_evals = c.num_steps // (c.inner_steps if family == "diloco" else c.eval_every)

  def simulate(key, inputs, hparams):
    params0, overlap, windows = inputs
    knob = hparams.get(KNOB_METRIC.get(family, ""), 0.0)
    alg = _algorithm(c, family, hparams["outer_lr"], knob, overlap, labels)
    data = jax.tree.map(jnp.asarray, ctx.data)

    def evaluate(state):
      model = (state.params if family == "diloco" else
               jax.tree.map(lambda w: jnp.mean(w, axis=0), state.workers))
      return transformer.lm_loss(config, model, *windows)

    def chunk(state, _):
      state, _ = jax.lax.scan(lambda s, _: (alg.round(s, data)[0], None), state, None,
                              length=every)
      return state, (state.sim_time, evaluate(state))

    state = alg.init(params0, jax.random.fold_in(key, KEY_RUN))
    _, (times, loss) = jax.lax.scan(chunk, state, None, length=num_evals)
    cat = lambda first, rest: jnp.concatenate([first[None], rest])
    return cat(state.sim_time, times), {"eval_loss": cat(evaluate(state), loss)}

  return simulate


def _initial_params(c, ctx: Context, seed: int):
  """Seed's initial model (cached: every family and method of a seed start from it)."""
  if seed not in ctx.params0:
    key = jax.random.fold_in(jax.random.PRNGKey(seed), KEY_MODEL)
    ctx.params0[seed] = transformer.init(model_config(c), key)
  return ctx.params0[seed]


def families(c, ctx: Context) -> list[families_lib.Family]:
  """DiLoCo, Streaming DiLoCo and CoCoDC, each tuned by mean final validation loss (a
  diverged grid point is never chosen). ``ctx`` is read only when runs are computed."""
  out = []
  for family in FAMILIES:
    methods = {method_name(family, t): t for t in overlaps(c, family)}

    def inputs(method, seed, stage, methods=methods):
      windows = ctx.tune if stage == "tune" else ctx.test
      return _initial_params(c, ctx, seed), np.int32(methods[method]), windows

    every = c.inner_steps if family == "diloco" else c.eval_every
    out.append(families_lib.Family(
        name=family, methods=tuple(methods), simulate=_simulate_fn(c, ctx, family),
        steps=range(0, c.num_steps + 1, every), inputs=inputs, grid=grid(c, family),
        select=families_lib.lowest("eval_loss")))
  return out


def info(c, ctx: Context) -> dict:
  del c
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
           for n in ("eval_loss", "outer_lr", "alpha", "lam0")}

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
    for t in overlaps(c, f):
      for point in grid(c, f):
        m = families_lib.point_name(method_name(f, t), point)
        vals = [final["eval_loss"].get(m, {}).get(s) for s in tuning_seeds(c)]
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
