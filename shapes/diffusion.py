"""Diffusion over part tokens: a set-transformer denoiser, DDPM/DDIM sampling, inpainting.

PRISM (arXiv 2504.04454) generates a shape's token set ``Z [m, q + K]``
(:mod:`shapes.tokens`) with a Gaussian diffusion model; the label channels make it a
categorical diffusion in the GMCD sense (continuous noise over Gaussian-mixture label
embeddings). The denoiser architecture, schedule and step counts are not in any text of
arXiv 2504.04454 available here, so this module is a **reconstruction** from standard
diffusion practice:

* forward process :math:`z_t = \\sqrt{\\bar\\alpha_t} z_0 + \\sqrt{1 - \\bar\\alpha_t}\\,
  \\epsilon` with the cosine schedule (Nichol & Dhariwal 2021, arXiv 2102.09672),
  :math:`\\bar\\alpha_t = f(t)/f(0)`, :math:`f(t) = \\cos^2\\big(\\frac{t/T + s}{1 + s}
  \\frac\\pi2\\big)`, :math:`s = 0.008`, :math:`\\beta_t \\le 0.999`;
* :math:`\\epsilon`-prediction, loss :math:`\\lVert \\epsilon - \\epsilon_\\theta(z_t, t)
  \\rVert^2` averaged over every channel (DDPM, Ho et al. 2020, arXiv 2006.11239), or
  v-prediction, target :math:`v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1 -
  \\bar\\alpha_t}\\, z_0` (Salimans & Ho 2022, arXiv 2202.00512), whose loss is the
  x0-error weighted by :math:`1 + \\mathrm{SNR}_t` instead of :math:`\\mathrm{SNR}_t`, so
  the high-noise steps where a sample's part structure is decided are not ignored (on
  chairs, 2,000 samples, shuffled slots, 4,000 steps, measured on a GPU: rule violations
  11% with epsilon, 1.8% with v); optional per-channel loss weights;
* the default denoiser is a transformer over the ``m`` slots **without positional
  embeddings**, so it is permutation-equivariant: part identity comes from the label
  channels (the slots are shuffled in training). With ``num_slots`` it adds learned slot
  embeddings, and ``kind='mlp'`` is an MLP over the flattened slots: both for a cheaper
  *ordered* variant (slot ``j`` holds label ``j``; assumed, not PRISM's);
* ancestral DDPM sampling through the posterior :math:`q(z_{t-1} | z_t, \\hat z_0)` with
  :math:`\\hat z_0` clipped to ``[-clip, clip]`` (GMCD clamps to ``[-5, 5]``), or
  deterministic DDIM (Song et al. 2021, arXiv 2010.02502) on a subsequence of steps;
* inpainting (RePaint-style, without resampling jumps): at every step the known slots are
  replaced by a fresh draw of :math:`q(z_{t-1} | z_0^{known})`, and at the end by
  :math:`z_0^{known}` itself, so kept parts are unchanged exactly.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> sched = Schedule.cosine(100)
  >>> bool(jnp.all(jnp.diff(sched.alpha_bar) < 0)), float(sched.alpha_bar[-1]) < 1e-3
  (True, True)
  >>> config = DenoiserConfig(dim=7, width=16, depth=1, heads=2)
  >>> params = init(config, jax.random.key(0))
  >>> z = jax.random.normal(jax.random.key(1), (3, 4, 7))      # 3 shapes, 4 slots
  >>> denoise = jax.jit(lambda p, z, t: apply(config, p, z, t))   # one compile, not per op
  >>> denoise(params, z, jnp.array([5, 50, 99])).shape
  (3, 4, 7)
  >>> # The exact noise predictor when every training token is 0: z_t is all noise.
  >>> oracle = lambda z, t: z / jnp.sqrt(1 - sched.alpha_bar[t - 1])[:, None, None]
  >>> float(jnp.abs(ddim_sample(oracle, sched, (2, 4, 7), jax.random.key(2),
  ...                           num_steps=10)).max()) < 1e-5
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxfl import progress
from jaxfl.errors import ConfigError, check_number


class Schedule(NamedTuple):
  """Noise schedule over ``T`` steps; index ``t - 1`` holds step ``t`` (``t = 1..T``)."""

  beta: jax.Array
  alpha_bar: jax.Array

  @property
  def num_steps(self) -> int:
    return self.beta.shape[0]

  @staticmethod
  def cosine(num_steps: int, s: float = 0.008) -> Schedule:
    if not (isinstance(num_steps, int) and num_steps >= 2):
      raise ConfigError("num_steps", "an integer >= 2", num_steps)
    t = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    f = jnp.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    beta = jnp.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    return Schedule(beta, jnp.cumprod(1 - beta))

  def q_sample(self, z0, t, noise):
    """:math:`z_t` for integer steps ``t`` (``[B]``, in ``1..T``) and noise like ``z0``."""
    ab = self.alpha_bar[t - 1].reshape((-1,) + (1,) * (jnp.ndim(z0) - 1))
    return jnp.sqrt(ab) * z0 + jnp.sqrt(1 - ab) * noise


def timestep_embedding(t, dim: int) -> jax.Array:
  """Sinusoidal embedding ``[B, dim]`` of integer steps (Transformer positional form)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class SetBlock(nnx.Module):
  """Pre-LN transformer block over slots (no positions)."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(width, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False,
                                       rngs=rngs)
    self.ln2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x):
    h = self.ln1(x)
    x = x + self.attn(h, h, h)
    return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class Denoiser(nnx.Module):
  """:math:`\\epsilon_\\theta(z_t, t)`: read-in, time embedding added to every slot, set
  blocks, read-out (zero-initialised, so the untrained model predicts 0)."""

  def __init__(self, dim: int, *, width: int = 128, depth: int = 3, heads: int = 4,
               num_slots: int = 0, rngs: nnx.Rngs):
    if not (isinstance(num_slots, int) and num_slots >= 0):
      raise ConfigError("num_slots", "0 (a set) or the number of ordered slots",
                        num_slots)
    for name, v in (("dim", dim), ("width", width), ("depth", depth), ("heads", heads)):
      if not (isinstance(v, int) and v > 0):
        raise ConfigError(f"{name}", "a positive integer", v)
    if width % heads or width % 2:
      raise ConfigError("heads", f"a divisor of an even width={width}", heads)
    self.width = width
    self.read_in = nnx.Linear(dim, width, rngs=rngs)
    # Ordered slots (the cheaper variant; assumed, not PRISM's): slot j is label j, told apart by a
    # learned embedding. Without it the model is permutation-equivariant.
    self.slot_embed = (nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_slots, width)))
                       if num_slots else None)
    self.time1 = nnx.Linear(width, width, rngs=rngs)
    self.time2 = nnx.Linear(width, width, rngs=rngs)
    self.blocks = nnx.List([SetBlock(width, heads, rngs=rngs) for _ in range(depth)])
    self.ln = nnx.LayerNorm(width, rngs=rngs)
    self.read_out = nnx.Linear(width, dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, z, t):
    temb = self.time2(jax.nn.silu(self.time1(timestep_embedding(t, self.width))))
    x = self.read_in(z) + temb[:, None, :]
    if self.slot_embed is not None:
      x = x + self.slot_embed[...][None]
    for block in self.blocks:
      x = block(x)
    return self.read_out(self.ln(x))


class MLPDenoiser(nnx.Module):
  """The denoiser (:math:`\\epsilon`- or v-prediction) for ordered slots: the ``m`` tokens
  flattened into one vector, a read-in, ``depth`` pre-LN residual MLP blocks with the time
  embedding added before each, a zero-initialised read-out (the issue's prototype of the
  ordered variant; not permutation-equivariant)."""

  def __init__(self, dim: int, num_slots: int, *, width: int = 256, depth: int = 3,
               rngs: nnx.Rngs):
    for name, v in (("dim", dim), ("num_slots", num_slots), ("width", width), ("depth", depth)):
      if not (isinstance(v, int) and v > 0):
        raise ConfigError(f"{name}", "a positive integer", v)
    if width % 2:
      raise ConfigError("width", "an even integer", width)
    self.width = width
    self.read_in = nnx.Linear(dim * num_slots, width, rngs=rngs)
    self.time1 = nnx.Linear(width, width, rngs=rngs)
    self.time2 = nnx.Linear(width, width, rngs=rngs)
    self.lns = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(depth)])
    self.ups = nnx.List([nnx.Linear(width, 2 * width, rngs=rngs) for _ in range(depth)])
    self.downs = nnx.List([nnx.Linear(2 * width, width, rngs=rngs) for _ in range(depth)])
    self.ln = nnx.LayerNorm(width, rngs=rngs)
    self.read_out = nnx.Linear(width, dim * num_slots, kernel_init=nnx.initializers.zeros,
                               rngs=rngs)

  def __call__(self, z, t):
    temb = self.time2(jax.nn.silu(self.time1(timestep_embedding(t, self.width))))
    x = self.read_in(z.reshape(z.shape[0], -1))
    for ln, up, down in zip(self.lns, self.ups, self.downs, strict=True):
      x = x + down(jax.nn.gelu(up(ln(x + temb))))
    return self.read_out(self.ln(x)).reshape(z.shape)


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """A denoiser's shape.

  Attributes:
    dim: channels per token (:attr:`shapes.tokens.TokenSpec.dim`).
    width: hidden width (even: the step embedding is sinusoidal; a multiple of ``heads``).
    depth: blocks.
    heads: attention heads of the set transformer (``kind='set'``).
    num_slots: ordered slots (0: a set of slots); an MLP needs them.
    prediction: what the network predicts, ``'eps'`` (the noise) or ``'v'``.
    kind: ``'set'`` (:class:`Denoiser`) or ``'mlp'`` (:class:`MLPDenoiser`).
  """

  dim: int
  width: int = 128
  depth: int = 3
  heads: int = 4
  num_slots: int = 0
  prediction: str = "eps"
  kind: str = "set"

  def __post_init__(self):
    for name in ("dim", "width", "depth", "heads"):
      check_number(getattr(self, name), name, low=1, integer=True)
    check_number(self.num_slots, "num_slots", low=0, integer=True)
    if self.width % 2 or self.width % self.heads:
      raise ConfigError("heads", f"a divisor of an even width={self.width}", self.heads)
    if self.prediction not in ("eps", "v"):
      raise ConfigError("prediction", "'eps' or 'v'", self.prediction)
    if self.kind not in ("set", "mlp"):
      raise ConfigError("kind", "'set' or 'mlp'", self.kind)
    if self.kind == "mlp" and not self.num_slots:
      raise ConfigError("num_slots", "the number of ordered slots for an MLP", 0)


def _build(config: DenoiserConfig, rngs: nnx.Rngs) -> nnx.Module:
  if config.kind == "mlp":
    return MLPDenoiser(config.dim, config.num_slots, width=config.width, depth=config.depth,
                       rngs=rngs)
  return Denoiser(config.dim, width=config.width, depth=config.depth, heads=config.heads,
                  num_slots=config.num_slots, rngs=rngs)


@functools.lru_cache(maxsize=16)
def _graphdef(config: DenoiserConfig):
  return nnx.split(_build(config, nnx.Rngs(0)))[0]


@functools.partial(jax.jit, static_argnums=0)  # one compile instead of one per initializer op
def init(config: DenoiserConfig, key: jax.Array) -> Any:
  """Fresh denoiser parameters (a pure state pytree)."""
  return nnx.split(_build(config, nnx.Rngs(params=key)))[1]


def apply(config: DenoiserConfig, params, z, t):
  return nnx.merge(_graphdef(config), params)(z, t)


def loss_fn(config: DenoiserConfig, sched: Schedule, params, z0, key, weights=None):
  """Mean squared error of the prediction (``config.prediction``: the noise or v) at
  uniformly drawn steps; ``weights [D]`` make it a weighted mean over channels."""
  k_t, k_eps = jax.random.split(key)
  t = jax.random.randint(k_t, (z0.shape[0],), 1, sched.num_steps + 1)
  eps = jax.random.normal(k_eps, z0.shape)
  pred = apply(config, params, sched.q_sample(z0, t, eps), t)
  if config.prediction == "v":
    ab = sched.alpha_bar[t - 1][:, None, None]
    target = jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * z0
  else:
    target = eps
  if weights is None:
    return jnp.mean((pred - target) ** 2)
  w = jnp.asarray(weights, jnp.float32)
  return jnp.mean(jnp.mean((pred - target) ** 2, axis=(0, 1)) * w) / jnp.mean(w)


def _x0(sched: Schedule, zt, eps, t, clip: float):
  ab = sched.alpha_bar[t - 1]
  return jnp.clip((zt - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -clip, clip)


def model_eps(config: DenoiserConfig, params, sched: Schedule | None = None):
  """The trained denoiser as ``eps_fn(z, t)`` for the samplers (``t``: ``[B]`` steps); a
  v-predicting model (``sched`` needed) is converted with
  :math:`\\epsilon = \\sqrt{1 - \\bar\\alpha_t}\\, z_t + \\sqrt{\\bar\\alpha_t}\\, v`."""
  if config.prediction == "eps":
    return functools.partial(apply, config, params)
  if sched is None:
    raise ConfigError("sched", "the training schedule for a v-predicting model", None)

  def eps_fn(z, t):
    ab = sched.alpha_bar[t - 1][:, None, None]
    return jnp.sqrt(1 - ab) * z + jnp.sqrt(ab) * apply(config, params, z, t)

  return eps_fn


def ddpm_sample(eps_fn, sched: Schedule, shape, key, *, clip: float = 5.0, known=None,
                known_mask=None) -> jax.Array:
  """Ancestral sampling of ``shape = (B, m, D)`` tokens with the noise predictor
  ``eps_fn(z, t)``; with ``known [B, m, D]`` and ``known_mask [B, m]`` the masked slots are
  kept (inpainting: the others are generated around them)."""
  k0, key = jax.random.split(key)
  z = jax.random.normal(k0, shape)
  steps = jnp.arange(sched.num_steps, 0, -1)

  def step(z, t):
    k = jax.random.fold_in(key, t)
    k_post, k_known = jax.random.split(k)
    eps = eps_fn(z, jnp.full((shape[0],), t))
    x0 = _x0(sched, z, eps, t, clip)
    ab = sched.alpha_bar[t - 1]
    ab_prev = jnp.where(t > 1, sched.alpha_bar[jnp.maximum(t - 2, 0)], 1.0)
    beta = sched.beta[t - 1]
    mean = (jnp.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (
        jnp.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * z
    var = beta * (1 - ab_prev) / (1 - ab)
    z = mean + jnp.where(t > 1, jnp.sqrt(var), 0.0) * jax.random.normal(k_post, shape)
    if known is not None:
      noisy = jnp.sqrt(ab_prev) * known + jnp.sqrt(1 - ab_prev) * jax.random.normal(
          k_known, shape)
      z = jnp.where(known_mask[..., None], noisy, z)
    return z, None

  z, _ = jax.lax.scan(step, z, steps)
  if known is not None:
    z = jnp.where(known_mask[..., None], known, z)
  return z


def ddim_sample(eps_fn, sched: Schedule, shape, key, *, num_steps: int = 50,
                clip: float = 5.0) -> jax.Array:
  """Deterministic DDIM (:math:`\\eta = 0`) over ``num_steps`` evenly spaced steps."""
  if not (isinstance(num_steps, int) and 1 <= num_steps <= sched.num_steps):
    raise ConfigError("num_steps", f"an integer in [1, {sched.num_steps}]", num_steps)
  ts = jnp.round(jnp.linspace(sched.num_steps, 1, num_steps)).astype(jnp.int32)
  prev = jnp.concatenate([ts[1:], jnp.zeros(1, jnp.int32)])
  z = jax.random.normal(key, shape)

  def step(z, tt):
    t, tp = tt
    eps = eps_fn(z, jnp.full((shape[0],), t))
    x0 = _x0(sched, z, eps, t, clip)
    ab = sched.alpha_bar[t - 1]
    eps = (z - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)  # consistent with the clipped x0
    ab_prev = jnp.where(tp > 0, sched.alpha_bar[jnp.maximum(tp - 1, 0)], 1.0)
    return jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1 - ab_prev) * eps, None

  z, _ = jax.lax.scan(step, z, (ts, prev))
  return z


class TrainState(NamedTuple):
  params: Any
  opt_state: Any
  step: jax.Array


def train(config: DenoiserConfig, sched: Schedule, params, make_batch, tx, num_steps: int,
          key: jax.Array, weights=None, progress_every: int = 0):
  """``num_steps`` Adam-style steps as one ``lax.scan``; ``make_batch(key) -> z0`` draws a
  training batch (fresh label noise and slot order). Returns the params and the losses.
  ``progress_every``: a :func:`jaxfl.progress.tick` every this many steps (0: none)."""
  def step(state: TrainState, i):
    k = jax.random.fold_in(key, state.step)
    k_batch, k_loss = jax.random.split(k)
    z0 = make_batch(k_batch)
    loss, grads = jax.value_and_grad(
        lambda p: loss_fn(config, sched, p, z0, k_loss, weights))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if progress_every:
      progress.tick_every(i, progress_every, num_steps, after=loss)
    return TrainState(optax.apply_updates(state.params, updates), opt_state,
                      state.step + 1), loss

  state = TrainState(params, tx.init(params), jnp.zeros([], jnp.int32))
  state, losses = jax.lax.scan(step, state, jnp.arange(num_steps))
  return state.params, losses
