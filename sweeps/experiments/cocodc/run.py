"""CoCoDC's runs: validation, the corpus and model set-up, and the three method families
(diloco, streaming, cocodc), each tuned over the same traced grid of its own step sizes
(inner x outer learning rate); ``alpha`` and ``lam0`` are fixed config values."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl import progress
from jaxfl.algorithms.diloco import DiLoCo
from jaxfl.algorithms.streaming_diloco import StreamingDiLoCo
from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import check, check_number
from jaxfl.local import ClientData
from jaxfl.models import transformer
from jaxfl.planners import fragments as frag
from jaxfl.sim import WAN, tree_bytes
from sweeps import families as families_lib
from sweeps.configs import common
from sweeps.experiments import lm_pretrain

FAMILIES = ("diloco", "streaming", "cocodc")
NAMES = {"diloco": "DiLoCo (blocking)", "streaming": "Streaming DiLoCo", "cocodc": "CoCoDC"}
KNOB = {"streaming": "alpha", "cocodc": "lam0"}  # each streaming family's fixed knob
HPARAMS = ("inner_lr", "outer_lr")  # every family's tuning grid, in this order
KEY_MODEL, KEY_RUN = range(2)
PAPER = ("CoCoDC reduces the training steps to a comparable perplexity by up to 21.0% vs "
         "Streaming DiLoCo (arXiv 2504.17672)")


def validate(c) -> None:
  """Every field, before anything runs or is written."""
  common.check(c)
  for f in ("seq_len", "num_workers", "windows_per_worker",
            "eval_windows", "batch_size", "num_steps", "inner_steps", "num_fragments",
            "eval_every"):
    check_number(c[f], f, low=1, integer=True)
  check_number(c.warmup_steps, "warmup_steps", low=0, integer=True)
  check(c.batch_size <= c.windows_per_worker, "batch_size",
        f"at most windows_per_worker={c.windows_per_worker} (a worker's own data)", c.batch_size)
  layers = model_config(c).num_layers  # builds the model and wan blocks: their fields
  _wan(c)
  n_domains = len(corpus_lib.CLIENT_DOMAINS)
  check(c.num_workers <= n_domains, "num_workers",
        f"at most {n_domains} (one stdlib domain each)", c.num_workers)
  check(c.eval_windows >= 2, "eval_windows", "at least 2 (split into tuning and test)",
        c.eval_windows)
  check(c.inner_steps % c.eval_every == 0, "eval_every",
        f"a divisor of inner_steps={c.inner_steps}", c.eval_every)
  check(c.num_steps % c.inner_steps == 0, "num_steps",
        f"a multiple of inner_steps={c.inner_steps}", c.num_steps)
  check(c.num_fragments <= min(layers + 2, c.inner_steps), "num_fragments",
        f"at most min(model.num_layers + 2, inner_steps) = {min(layers + 2, c.inner_steps)}",
        c.num_fragments)
  check(c.fragment_pattern in ("sequential", "strided"), "fragment_pattern",
        "'sequential' or 'strided'", c.fragment_pattern)
  overlaps = tuple(c.overlaps)
  check(len(overlaps) >= 1 and len(set(overlaps)) == len(overlaps) and
        all(isinstance(t, int) and 0 < t < c.inner_steps for t in overlaps), "overlaps",
        f"distinct integers in [1, inner_steps={c.inner_steps})", overlaps)
  for f in ("step_time", "clip_norm"):
    check_number(c[f], f, low=0, strict=True)
  check_number(c.weight_decay, "weight_decay", low=0)
  check_number(c.outer_momentum, "outer_momentum")
  check(0 <= c.outer_momentum < 1, "outer_momentum", "a number in [0, 1)", c.outer_momentum)
  for f in ("inner_lr_grid", "outer_lr_grid"):
    grid = tuple(c[f])
    check(len(grid) >= 1 and len(set(grid)) == len(grid) and
          all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in grid), f,
          "distinct positive numbers", grid)
  check_number(c.alpha, "alpha")
  check(0 <= c.alpha <= 1, "alpha", "a mixing weight in [0, 1]", c.alpha)
  check_number(c.lam0, "lam0", low=0)
  check_number(c.target_window, "target_window", low=0, integer=True)
  check_number(c.target_step, "target_step", low=1, integer=True)
  room = (c.num_steps - c.target_step) // c.eval_every
  check(c.target_step % c.inner_steps == 0 and room >= c.target_window, "target_step",
        f"a multiple of inner_steps={c.inner_steps} with at least target_window="
        f"{c.target_window} evaluations after it before num_steps={c.num_steps}", c.target_step)
  check(0 <= c.min_step_reduction < 1, "min_step_reduction", "a fraction in [0, 1)",
        c.min_step_reduction)


# ----------------------------------------------------------------------------- runs


def grid(c, family: str) -> list[dict[str, float]]:
  """The points every family is tuned over, the same for each: ``inner_lr x outer_lr``."""
  del family
  return [{"inner_lr": float(a), "outer_lr": float(b)}
          for a in c.inner_lr_grid for b in c.outer_lr_grid]


def overlaps(c, family: str) -> list[int]:
  return [0] if family == "diloco" else [int(t) for t in c.overlaps]


def method_name(family: str, overlap: int) -> str:
  return family if family == "diloco" else f"{family}_tau{overlap}"


def point_name(family: str, overlap: int, point) -> str:
  """A tuning run's name: ``cocodc_tau12[inner_lr=0.002,outer_lr=0.7]``."""
  return families_lib.point_name(method_name(family, overlap), point)


def reported_methods(c) -> list[str]:
  return [method_name(f, t) for f in FAMILIES for t in overlaps(c, f)]


def family_of(method: str) -> str:
  return method.split("_", 1)[0]


# ----------------------------------------------------------------------------- setup


class Context:
  """Data, the validation and test windows, and each seed's initial model."""

  def __init__(self, data: ClientData, tune: tuple, test: tuple, domains: tuple[str, ...],
               num_params: int):
    self.data = data
    self.num_params = num_params
    self.tune = tune  # even evaluation windows of each domain: the validation split
    self.test = test  # the odd ones: the test split (reported curves, claims)
    self.domains = domains
    self.params0: dict[int, Any] = {}  # seed -> initial model


def model_config(c) -> transformer.LMConfig:
  """The ``model`` block as :class:`transformer.LMConfig` (windows of ``seq_len`` bytes)."""
  return common.build(transformer.LMConfig, c.model, "model", max_len=c.seq_len)


def prepare(c) -> Context:
  corpus = lm_pretrain.load_corpus(c)
  shards = corpus_lib.client_domains(c.num_workers)
  # Equal counts: workers draw batches uniformly from their own windows.
  data = corpus_lib.client_windows(corpus, c.num_workers, c.seq_len, c.windows_per_worker,
                                   equal=True)
  tune, test = split_windows(corpus, [s.domain for s in shards], c.seq_len, c.eval_windows)
  return Context(data, tune, test, tuple(s.domain for s in shards),
                 transformer.num_params(_shapes(c)))


def split_windows(corpus, domains, seq_len: int, per_domain: int) -> tuple[tuple, tuple]:
  """``(validation, test)`` windows, each ``(inputs, targets)``: ``per_domain`` evenly
  spaced windows of each domain's validation files (held out from training), the even
  ones of every domain to validation and the odd ones to test (disjoint: no target byte
  is scored in both)."""
  parts = [corpus_lib.domain_windows(corpus, [d], seq_len, per_domain) for d in domains]
  cat = lambda k, start: np.concatenate([p[k][start::2] for p in parts])
  return (cat(0, 0), cat(1, 0)), (cat(0, 1), cat(1, 1))


def inner_optimizer(c, lr) -> optax.GradientTransformation:
  """AdamW (betas 0.9/0.95) with peak learning rate ``lr`` (may be traced), linear warmup
  and cosine decay to 10% of it, after clipping."""
  shape = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, c.warmup_steps, max(c.num_steps, c.warmup_steps + 1), end_value=0.1)
  return optax.chain(optax.clip_by_global_norm(c.clip_norm),
                     optax.adamw(lambda count: lr * shape(count), b1=0.9, b2=0.95,
                                 weight_decay=c.weight_decay))


def _shapes(c):
  return jax.eval_shape(lambda: transformer.init(model_config(c), jax.random.key(0)))


def _labels(c, shapes=None):
  units = frag.fragment_units(c.model.num_layers + 2, c.num_fragments, c.fragment_pattern)
  return frag.fragment_labels(_shapes(c) if shapes is None else shapes, units)


def _wan(c) -> WAN:
  return common.build(WAN, c.wan, "wan")


def _algorithm(c, family: str, hparams, overlap, labels=None):
  """The family's engine; ``hparams`` (``inner_lr``, ``outer_lr``) and ``overlap`` may be
  traced."""
  config = model_config(c)
  loss_fn = lambda p, x, y: transformer.lm_loss(config, p, x, y)
  inner = inner_optimizer(c, hparams["inner_lr"])
  outer = optax.sgd(hparams["outer_lr"], momentum=c.outer_momentum, nesterov=True)
  common = dict(num_workers=c.num_workers, inner_steps=c.inner_steps,
                batch_size=c.batch_size, step_time=float(c.step_time), wan=_wan(c))
  if family == "diloco":
    return DiLoCo(loss_fn, inner, outer, **common)
  knobs = dict(alpha=float(c.alpha)) if family == "streaming" else dict(lam0=float(c.lam0))
  return StreamingDiLoCo(loss_fn, inner, outer,
                         labels=_labels(c) if labels is None else labels,
                         num_fragments=c.num_fragments, overlap=overlap, mode=family,
                         **knobs, **common)


def _simulate_fn(c, ctx: Context, family: str):
  """``simulate(key, (params0, overlap, windows), {inner_lr, outer_lr})``: the run's
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
    alg = _algorithm(c, family, hparams, overlap, labels)
    data = jax.tree.map(jnp.asarray, ctx.data)

    def evaluate(state):
      model = (state.params if family == "diloco" else
               jax.tree.map(lambda w: jnp.mean(w, axis=0), state.workers))
      return transformer.lm_loss(config, model, *windows)

    def chunk(state, i):
      state, _ = jax.lax.scan(lambda s, _: (alg.round(s, data)[0], None), state, None,
                              length=every)
      loss = evaluate(state)
      # Rows: the initial model's, then one per chunk.
      progress.tick(i + 2, num_evals + 1, after=loss)
      return state, (state.sim_time, loss)

    state = alg.init(params0, jax.random.fold_in(key, KEY_RUN))
    _, (times, loss) = jax.lax.scan(chunk, state, jnp.arange(num_evals))
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
  """DiLoCo, Streaming DiLoCo and CoCoDC, each tuned over :func:`grid` by mean final
  validation loss on the tuning seeds (a diverged grid point is never chosen). ``ctx`` is
  read only when runs are computed."""
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


def fragment_comm_seconds(c) -> tuple[float, float]:
  """Simulated seconds of the full model's all-reduce and of one fragment's (mean)."""
  shapes = _shapes(c)
  full = _wan(c).allreduce_time(tree_bytes(shapes), c.num_workers)
  point = grid(c, "streaming")[0]
  engine = _algorithm(c, "streaming", point, int(c.overlaps[0]), _labels(c, shapes))
  return full, float(np.mean(engine.fragment_comm_time(shapes)))
