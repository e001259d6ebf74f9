r"""Delay compensation: correct a stale update for the weights having moved since.

A gradient (or a block of local progress) computed at weights :math:`w_{bak}` is
applied at weights :math:`w` that have moved on. Its first-order Taylor expansion
around :math:`w_{bak}` gives the gradient at :math:`w`:

.. math::
  g(w) \approx g(w_{bak}) + H(w_{bak})\,(w - w_{bak}).

The Hessian :math:`H` is unavailable, so DC-ASGD (Zheng et al., ICML 2017, arXiv
1609.08326) replaces it by the outer product of the gradient, :math:`G = g g^\top`. For a
negative log-likelihood loss the expected outer product is the Fisher information, which
equals the expected Hessian; so :math:`G` is an unbiased (if noisy) estimate of
:math:`H`. The full :math:`d \times d` matrix costs :math:`O(d^2)` memory and time, so
only its diagonal :math:`\mathrm{diag}(g g^\top) = g \odot g` is kept, scaled by
:math:`\lambda` (the paper shows :math:`\lambda G` with :math:`\lambda \in (0, 1]` can
have lower mean-square error to :math:`H` than :math:`G`, trading bias for variance):

.. math::
  H \approx \lambda\, g \odot g, \qquad
  g(w) \approx g + \lambda\, g \odot g \odot (w - w_{bak}).

The correction is elementwise and :math:`O(d)`, like the gradient itself.

* :func:`dc_asgd`: the DC-ASGD correction of a stale gradient (constant :math:`\lambda`,
  DC-ASGD-c, or the adaptive DC-ASGD-a).
* :func:`cocodc_correction` / :func:`cocodc_merge`: CoCoDC's per-tensor adaptive form
  for outer (fragment) updates that arrive :math:`\tau` steps late: Taylor delay
  compensation of the local progress, a **reconstruction** of arXiv 2504.17672 from the
  authors' released code (its comments cite the paper's "formula (17)"; the paper's
  typeset equations were not read).

The DC-ASGD forms and constants (:math:`\lambda = 0.04`; DC-ASGD-a's
:math:`\lambda_0 = 2`, :math:`m = 0.95`) are arXiv 1609.08326's as its public
implementations (MXNet's among them) use them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxfl.errors import ConfigError, is_number
from jaxfl.transforms._hyper import check_hyperparam


class DCASGDState(NamedTuple):
  """DC-ASGD state.

  Attributes:
    count: int32 number of updates.
    mean_square: DC-ASGD-a's running mean of :math:`g^2` (a tree like the params);
      ``None`` for constant :math:`\\lambda`.
  """

  count: jax.Array
  mean_square: Any


class CoCoDCState(NamedTuple):
  """Count of corrected outer updates (int32 scalar), for logging."""

  count: jax.Array


def _compute_dtype(dtype):
  # Products of three small factors underflow in bf16/fp16; work in at least float32.
  return jnp.promote_types(dtype, jnp.float32)


def _sq_norm(x: jax.Array) -> jax.Array:
  return jnp.sum(jnp.square(x))


def dc_asgd(lam: float = 0.04, *, adaptive: bool = False, lam0: float = 2.0,
            momentum: float = 0.95, eps: float = 1e-7
            ) -> optax.GradientTransformationExtraArgs:
  r"""DC-ASGD: compensate a stale gradient for the distance the weights moved.

  A worker computed :math:`g = \nabla f(w_{bak})` at its backup weights; the weights
  are now :math:`w`. The update is (module docstring: the Taylor expansion with the
  diagonal outer-product Hessian :math:`H \approx \lambda\, g \odot g`)

  .. math::
    u = g + \lambda \odot g \odot g \odot (w - w_{bak}).

  DC-ASGD-c (``adaptive=False``) uses a constant :math:`\lambda` (0.04, the MXNet
  default). DC-ASGD-a (``adaptive=True``) uses an elementwise :math:`\lambda_t` that
  normalises the gradient's scale, with the running mean square kept in the state
  (updated with the current gradient before use):

  .. math::
    \mathrm{MS}_t = m\, \mathrm{MS}_{t-1} + (1 - m)\, g^2, \qquad
    \lambda_t = \frac{\lambda_0}{\sqrt{\mathrm{MS}_t + \epsilon}}, \qquad \mathrm{MS}_0 = 0.

  Zheng et al., "Asynchronous Stochastic Gradient Descent with Delay Compensation",
  ICML 2017 (arXiv 1609.08326); the defaults are its public implementations'. With
  ``lam = 0`` (or ``lam0 = 0``) the update is the stale gradient itself, bit for bit (no
  arithmetic is done on it).

  The numeric hyperparameters may be scalar JAX arrays or tracers, so
  ``optax.inject_hyperparams`` can schedule or sweep them; Python numbers are checked
  here, arrays are taken as they are. ``adaptive`` is static (a bool, which
  ``inject_hyperparams`` keeps static by itself).

  Args:
    lam: constant :math:`\lambda \ge 0` (DC-ASGD-c); ignored if ``adaptive``.
    adaptive: use DC-ASGD-a's :math:`\lambda_t` instead.
    lam0: :math:`\lambda_0 \ge 0` of DC-ASGD-a (paper: 2).
    momentum: :math:`m \in [0, 1)` of the mean square (paper: 0.95).
    eps: :math:`\epsilon > 0` inside the square root.

  Returns:
    A transform whose ``update(updates, state, params, *, backup)`` takes the stale
    gradient, the current weights :math:`w` as ``params`` and the weights the gradient
    was computed at as ``backup`` (same tree), and returns the compensated gradient (a
    descent direction: follow with e.g. ``optax.sgd``). The state is :class:`DCASGDState`.

  Raises:
    ConfigError: a negative ``lam``/``lam0``, ``momentum`` outside [0, 1), ``eps <= 0``
      (Python numbers), a hyperparameter that is neither a number nor a scalar array, or
      ``params``/``backup`` missing in ``update``.

  Examples:
    :math:`g = (1, 2)`, :math:`w - w_{bak} = (0.5, -1)`, :math:`\lambda = 0.1`:
    :math:`u = (1 + 0.1 \cdot 1 \cdot 0.5,\; 2 + 0.1 \cdot 4 \cdot (-1)) = (1.05, 1.6)`.

    >>> import jax, jax.numpy as jnp
    >>> dc = dc_asgd(0.1)
    >>> w, w_bak = jnp.array([0.5, -1.0]), jnp.zeros(2)
    >>> u, _ = dc.update(jnp.array([1.0, 2.0]), dc.init(w), w, backup=w_bak)
    >>> [round(float(x), 4) for x in u]
    [1.05, 1.6]

    Chained with the server's optimizer (``optax.chain`` forwards ``backup``):

    >>> import optax
    >>> opt = optax.chain(dc_asgd(0.1), optax.sgd(1.0))
    >>> step, _ = opt.update(jnp.array([1.0, 2.0]), opt.init(w), w, backup=w_bak)
    >>> [round(float(x), 4) for x in step]
    [-1.05, -1.6]

    With ``optax.inject_hyperparams`` :math:`\lambda` lives in the state (here jitted, so
    the factory sees it as a tracer) and can be changed between steps:

    >>> opt = optax.inject_hyperparams(dc_asgd)(lam=0.1)
    >>> step = jax.jit(lambda g, s: opt.update(g, s, w, backup=w_bak))
    >>> u, state = step(jnp.array([1.0, 2.0]), opt.init(w))
    >>> [round(float(x), 4) for x in u]
    [1.05, 1.6]
  """
  check_hyperparam(lam, "lam", lambda v: v >= 0, "a compensation strength >= 0")
  check_hyperparam(lam0, "lam0", lambda v: v >= 0, "a compensation strength >= 0")
  check_hyperparam(momentum, "momentum", lambda v: 0 <= v < 1, "a float in [0, 1)")
  check_hyperparam(eps, "eps", lambda v: v > 0, "a float > 0")
  # A literal zero skips the arithmetic so the update is the plain one exactly (an
  # array's value is unknown here: it takes the arithmetic, which adds exactly 0).
  skip = (not adaptive and is_number(lam) and lam == 0) or (
      adaptive and is_number(lam0) and lam0 == 0)

  def init_fn(params):
    mean_square = None
    if adaptive:
      mean_square = jax.tree.map(lambda p: jnp.zeros(p.shape, _compute_dtype(p.dtype)), params)
    return DCASGDState(count=jnp.zeros([], jnp.int32), mean_square=mean_square)

  def update_fn(updates, state, params=None, *, backup=None, **extra_args):
    del extra_args
    if params is None:
      raise ConfigError("params", "the current weights w (DC-ASGD needs w - w_bak)")
    if backup is None:
      raise ConfigError("backup", "the weights the stale gradient was computed at")
    mean_square = state.mean_square
    if adaptive:
      mean_square = jax.tree.map(
          lambda ms, g: momentum * ms + (1 - momentum) * jnp.square(g.astype(ms.dtype)),
          mean_square, updates)
    new_state = DCASGDState(count=state.count + 1, mean_square=mean_square)
    if skip:
      return updates, new_state

    def leaf(g, w, w_bak, ms=None):
      dt = _compute_dtype(g.dtype)
      g32 = g.astype(dt)
      strength = lam0 / jnp.sqrt(ms + eps) if adaptive else jnp.asarray(lam, dt)
      delta = w.astype(dt) - w_bak.astype(dt)
      return (g32 + strength * g32 * g32 * delta).astype(g.dtype)

    if adaptive:
      out = jax.tree.map(leaf, updates, params, backup, mean_square)
    else:
      out = jax.tree.map(leaf, updates, params, backup)
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _cocodc_leaf(g1: jax.Array, discrepancy: jax.Array, lam0, eps) -> jax.Array:
  """g1 + lambda_i * C_i for one tensor, with lambda_i from the tensor's norms."""
  dt = _compute_dtype(g1.dtype)
  g = g1.astype(dt)
  c = g * g * discrepancy.astype(dt)
  lam = lam0 * jnp.sqrt(_sq_norm(g)) / (jnp.sqrt(_sq_norm(c)) + eps)
  return (g + lam * c).astype(g1.dtype)


def _check_cocodc(lam0, eps):
  check_hyperparam(lam0, "lam0", lambda v: v >= 0, "a compensation strength >= 0")
  check_hyperparam(eps, "eps", lambda v: v > 0, "a float > 0")


def cocodc_correction(lam0: float = 0.2, eps: float = 1e-8
                      ) -> optax.GradientTransformationExtraArgs:
  r"""CoCoDC's delay compensation of the local progress made during an overlapped sync.

  A fragment's local snapshot ("staged") was sent at step :math:`t_s`; the new global
  value :math:`\theta^G_{new}` arrives at :math:`t_s + \tau`. Meanwhile the worker went
  from staged to :math:`\theta^L_{now}`. That progress, as a descent "gradient",

  .. math::
    g_1 = \theta_{staged} - \theta^L_{now}, \qquad D = \theta^G_{new} - \theta_{staged},

  was made along a trajectory starting at staged, but it should have started at
  :math:`\theta^G_{new}`. As in DC-ASGD (module docstring), :math:`g(\theta^G) \approx
  g_1 + H D` with :math:`H \approx \lambda\, g_1 \odot g_1`. CoCoDC picks
  :math:`\lambda` per tensor :math:`i` (per leaf) so that the correction has norm
  :math:`\lambda_0 \lVert g_{1,i} \rVert`:

  .. math::
    C_i = g_{1,i} \odot g_{1,i} \odot D_i, \qquad
    \lambda_i = \frac{\lambda_0 \lVert g_{1,i} \rVert_2}{\lVert C_i \rVert_2 + \epsilon},
    \qquad g^c_{1,i} = g_{1,i} + \lambda_i C_i.

  The worker then restarts from :math:`\theta^L_{new} = \theta^G_{new} - g^c_1`
  (:func:`cocodc_merge`). Norms are Frobenius norms over the whole leaf. :math:`\epsilon`
  is absolute, so when :math:`\lVert C_i \rVert \lesssim \epsilon` (tiny progress or
  discrepancy) the correction fades out smoothly; the authors' code scales :math:`C` by
  2500 first, which only moves that threshold; :math:`\epsilon = 10^{-8}` is **assumed**.

  A **reconstruction** of CoCoDC (arXiv 2504.17672) from the authors' released code (its
  comment names it "formula (17)" and says the paper suggests :math:`\lambda_0 = 0.2`, the
  default here; the authors' run script uses 0.5); the per-leaf norms follow the code's
  per-tensor loop. With ``lam0 = 0`` the output is :math:`g_1` exactly.

  Args:
    lam0: :math:`\lambda_0 \ge 0`, the correction's norm relative to :math:`g_1`'s.
    eps: :math:`\epsilon > 0` in :math:`\lambda_i`'s denominator.

  Both may be scalar JAX arrays or tracers (``optax.inject_hyperparams``); Python numbers
  are checked here, arrays are taken as they are.

  Returns:
    A transform whose ``update(updates, state, params=None, *, discrepancy)`` takes
    :math:`g_1` as ``updates`` and :math:`D = \theta^G_{new} - \theta_{staged}` (same
    tree) and returns :math:`g^c_1`. Per-tensor norms are per call, so under ``vmap``
    over workers each worker gets its own :math:`\lambda_i`. The state is
    :class:`CoCoDCState`.

  Raises:
    ConfigError: negative ``lam0``, ``eps <= 0`` (Python numbers), a hyperparameter that is
      neither a number nor a scalar array, or ``discrepancy`` missing.

  Examples:
    :math:`g_1 = (3, 4)`, :math:`D = (1, 0)`: :math:`C = (9, 0)`, so the correction is
    :math:`0.2 \cdot 5 \cdot (1, 0) = (1, 0)` (up to :math:`\epsilon`):

    >>> import jax.numpy as jnp
    >>> dc = cocodc_correction(0.2)
    >>> g1 = jnp.array([3.0, 4.0])
    >>> out, _ = dc.update(g1, dc.init(g1), discrepancy=jnp.array([1.0, 0.0]))
    >>> [round(float(x), 4) for x in out]
    [4.0, 4.0]
  """
  _check_cocodc(lam0, eps)
  skip = is_number(lam0) and lam0 == 0

  def init_fn(params):
    del params
    return CoCoDCState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, discrepancy=None, **extra_args):
    del params, extra_args
    if discrepancy is None:
      raise ConfigError("discrepancy", "theta^G_new - staged, a tree like the updates")
    new_state = CoCoDCState(count=state.count + 1)
    if skip:
      return updates, new_state
    out = jax.tree.map(lambda g, d: _cocodc_leaf(g, d, lam0, eps), updates, discrepancy)
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def cocodc_merge(global_new: Any, staged: Any, local_now: Any, lam0: float = 0.2,
                 eps: float = 1e-8) -> Any:
  r"""CoCoDC's receive step: the worker's new local fragment from the new global one.

  .. math::
    \theta^L_{new} = \theta^G_{new} - g^c_1,

  with :math:`g^c_1` the compensated local progress of :func:`cocodc_correction`
  (:math:`g_1 = \theta_{staged} - \theta^L_{now}`, :math:`D = \theta^G_{new} -
  \theta_{staged}`). With ``lam0 = 0`` this is :math:`\theta^G_{new} + (\theta^L_{now} -
  \theta_{staged})`: the local progress replayed on the new global value (no
  :math:`\alpha`-mixing, unlike Streaming DiLoCo). With :math:`\tau = 0` (nothing done
  since the send, :math:`g_1 = 0`) it is :math:`\theta^G_{new}` exactly.

  Args:
    global_new: :math:`\theta^G_{new}`, the fragment after the outer step.
    staged: :math:`\theta_{staged}`, the local snapshot sent at :math:`t_s`.
    local_now: :math:`\theta^L_{now}`, the live local fragment at :math:`t_s + \tau`.
    lam0: :math:`\lambda_0 \ge 0`.
    eps: :math:`\epsilon > 0`.

  Returns:
    :math:`\theta^L_{new}`, a tree like ``global_new``.

  Examples:
    Local progress :math:`g_1 = (3, 4)` and :math:`D = (1, 0)`: replayed as is, then with
    the correction :math:`(1, 0)` of :func:`cocodc_correction`'s example:

    >>> import jax.numpy as jnp
    >>> g_new, staged, now = jnp.array([1.0, 0.0]), jnp.zeros(2), jnp.array([-3.0, -4.0])
    >>> [float(x) for x in cocodc_merge(g_new, staged, now, lam0=0.0)]
    [-2.0, -4.0]
    >>> [round(float(x), 4) for x in cocodc_merge(g_new, staged, now, lam0=0.2)]
    [-3.0, -4.0]
  """
  _check_cocodc(lam0, eps)
  skip = is_number(lam0) and lam0 == 0

  def leaf(gn, s, ln):
    g1 = s - ln
    g1c = g1 if skip else _cocodc_leaf(g1, gn - s, lam0, eps)
    return gn - g1c.astype(gn.dtype)

  return jax.tree.map(leaf, global_new, staged, local_now)
