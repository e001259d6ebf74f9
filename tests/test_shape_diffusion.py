"""Diffusion over part tokens: schedule, samplers against oracle denoisers, inpainting,
permutation equivariance and training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from shapes import diffusion


SCHED = diffusion.Schedule.cosine(100)


def gaussian_oracle(mu, s):
  """The exact noise predictor for data N(mu, s^2 I): E[eps | z_t]."""
  def eps(z, t):
    ab = SCHED.alpha_bar[t - 1][:, None, None]
    return jnp.sqrt(1 - ab) * (z - jnp.sqrt(ab) * mu) / (ab * s**2 + 1 - ab)
  return eps


def test_cosine_schedule_and_forward_marginals():
  ab = np.asarray(SCHED.alpha_bar)
  assert (np.diff(ab) < 0).all() and ab[0] > 0.99 and ab[-1] < 1e-3
  z0 = jnp.full((20000, 1, 1), 2.0)
  t = jnp.full((20000,), 50)
  zt = SCHED.q_sample(z0, t, jax.random.normal(jax.random.key(0), z0.shape))
  # mean sqrt(ab) * 2 and variance 1 - ab; 4 standard errors at n = 20000.
  assert abs(float(zt.mean()) - np.sqrt(ab[49]) * 2) < 4 * np.sqrt(1 - ab[49]) / np.sqrt(2e4)
  assert abs(float(zt.var()) - (1 - ab[49])) < 4 * (1 - ab[49]) * np.sqrt(2 / 2e4)
  with pytest.raises(ConfigError, match="num_steps"):
    diffusion.Schedule.cosine(1)


def test_samplers_with_a_point_mass_oracle_return_the_point():
  c = jnp.array([0.5, -1.0, 2.0])
  eps = gaussian_oracle(c.reshape(1, 1, 3), 0.0)
  z = diffusion.ddpm_sample(eps, SCHED, (4, 2, 3), jax.random.key(0))
  np.testing.assert_allclose(z, jnp.broadcast_to(c, z.shape), atol=1e-4)
  z = diffusion.ddim_sample(eps, SCHED, (4, 2, 3), jax.random.key(0), num_steps=10)
  np.testing.assert_allclose(z, jnp.broadcast_to(c, z.shape), atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_with_a_gaussian_oracle_match_its_moments(sampler):
  mu, s = 1.5, 0.5
  eps = gaussian_oracle(mu, s)
  shape = (20000, 1, 1)
  if sampler == "ddpm":
    z = diffusion.ddpm_sample(eps, SCHED, shape, jax.random.key(1))
  else:
    z = diffusion.ddim_sample(eps, SCHED, shape, jax.random.key(1), num_steps=50)
  # Sampling error of the mean (s / sqrt(n) = 0.0035) plus discretisation; stated bounds.
  assert abs(float(z.mean()) - mu) < 0.02
  assert abs(float(z.std()) - s) < 0.02


def test_inpainting_keeps_the_known_slots_exactly():
  known = jax.random.normal(jax.random.key(2), (3, 4, 5))
  mask = jnp.array([[True, False, False, True]] * 3)
  eps = gaussian_oracle(0.0, 1.0)
  z = diffusion.ddpm_sample(eps, SCHED, known.shape, jax.random.key(3), known=known,
                            known_mask=mask)
  np.testing.assert_array_equal(z[:, [0, 3]], known[:, [0, 3]])
  assert not np.allclose(z[:, 1], known[:, 1])


def test_denoiser_is_permutation_equivariant_and_training_lowers_the_loss():
  cfg = diffusion.DenoiserConfig(dim=4, width=32, depth=1, heads=2)
  params = diffusion.init(cfg, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (2, 3, 4))
  t = jnp.array([10, 90])
  out = diffusion.apply(cfg, params, z, t)
  perm = jnp.array([2, 0, 1])
  np.testing.assert_allclose(diffusion.apply(cfg, params, z[:, perm], t), out[:, perm],
                             atol=1e-5)
  assert float(jnp.abs(out).max()) == 0.0  # zero-initialised read-out
  # Data: 3 slots holding one of two fixed tokens; the loss at init is 1 (eps ~ N(0, I)).
  protos = jnp.array([[1.0, -1.0, 0.5, 0.0], [-0.5, 1.0, 0.0, 1.0]])
  make = lambda k: protos[jax.random.bernoulli(k, 0.5, (64, 3)).astype(jnp.int32)]
  params, losses = jax.jit(lambda p: diffusion.train(
      cfg, SCHED, p, make, optax.adam(3e-3), 300, jax.random.key(2)))(params)
  # The first step's loss is the mean of 768 squared standard normals: 1 +- 0.05.
  first, last = float(losses[0]), float(losses[-50:].mean())
  assert 0.85 < first < 1.15 and last < 0.5 * first
