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


@pytest.mark.slow
def test_denoiser_is_permutation_equivariant_and_training_lowers_the_loss():
  cfg = diffusion.DenoiserConfig(dim=4, width=32, depth=1, heads=2)
  params = diffusion.init(cfg, jax.random.key(0))
  z = jax.random.normal(jax.random.key(1), (2, 3, 4))
  t = jnp.array([10, 90])
  apply = jax.jit(lambda p, z, t: diffusion.apply(cfg, p, z, t))
  out = apply(params, z, t)
  perm = jnp.array([2, 0, 1])
  np.testing.assert_allclose(apply(params, z[:, perm], t), out[:, perm], atol=1e-5)
  assert float(jnp.abs(out).max()) == 0.0  # zero-initialised read-out
  # Data: 3 slots holding one of two fixed tokens; the loss at init is 1 (eps ~ N(0, I)).
  protos = jnp.array([[1.0, -1.0, 0.5, 0.0], [-0.5, 1.0, 0.0, 1.0]])
  make = lambda k: protos[jax.random.bernoulli(k, 0.5, (64, 3)).astype(jnp.int32)]
  params, losses = jax.jit(lambda p: diffusion.train(
      cfg, SCHED, p, make, optax.adam(3e-3), 300, jax.random.key(2)))(params)
  # The first step's loss is the mean of 768 squared standard normals: 1 +- 0.05.
  first, last = float(losses[0]), float(losses[-50:].mean())
  assert 0.85 < first < 1.15 and last < 0.5 * first


@pytest.mark.slow
def test_untrained_v_model_gives_the_prior_eps_and_ordered_mlp_shapes():
  # The read-out is zero at init, so v_hat = 0 and eps = sqrt(1 - ab) z exactly: the
  # implied x0 = sqrt(ab) z - sqrt(1 - ab) v_hat is the prior-mean shrinkage sqrt(ab) z.
  z = jax.random.normal(jax.random.key(0), (3, 4, 7))
  t = jnp.array([1, 40, 100])
  ab = SCHED.alpha_bar[t - 1][:, None, None]
  for kind in ("set", "mlp"):
    config = diffusion.DenoiserConfig(dim=7, width=16, depth=1, heads=2, num_slots=4,
                                      prediction="v", kind=kind)
    params = diffusion.init(config, jax.random.key(1))
    eps = jax.jit(lambda p, z, t, c=config: diffusion.model_eps(c, p, SCHED)(z, t))
    np.testing.assert_allclose(eps(params, z, t), jnp.sqrt(1 - ab) * z, rtol=1e-6)
  with pytest.raises(ConfigError, match="sched"):
    diffusion.model_eps(config, params)
  with pytest.raises(ConfigError, match="num_slots"):
    diffusion.DenoiserConfig(dim=7, kind="mlp")
  with pytest.raises(ConfigError, match="prediction"):
    diffusion.DenoiserConfig(dim=7, prediction="x0")


@pytest.mark.parametrize("kwargs,field", [
    (dict(dim=0), "dim"), (dict(width=0), "width"), (dict(depth=2.0), "depth"),
    (dict(heads=3), "heads"), (dict(width=9, heads=1), "heads"), (dict(num_slots=-1), "num_slots"),
    (dict(kind="unet"), "kind"), (dict(prediction="x0"), "prediction"),
])
def test_denoiser_config_names_the_bad_field(kwargs, field):
  with pytest.raises(ConfigError) as e:
    diffusion.DenoiserConfig(**{"dim": 7, "width": 8, "heads": 2, **kwargs})
  assert e.value.field == field
  assert diffusion.DenoiserConfig(dim=7, width=8, heads=2, num_slots=5, kind="mlp").num_slots == 5


@pytest.mark.slow
def test_channel_weights_scale_out_and_select_channels():
  config = diffusion.DenoiserConfig(dim=5, width=8, depth=1, heads=2)
  params = diffusion.init(config, jax.random.key(0))
  z0 = jax.random.normal(jax.random.key(1), (6, 3, 5))
  key = jax.random.key(2)
  loss = jax.jit(lambda w: diffusion.loss_fn(config, SCHED, params, z0, key, w))
  # Equal weights give the plain mean of eps^2 (the untrained model predicts 0), as no
  # weights do (the training test); a one-hot weight gives that channel's mean.
  _, k_eps = jax.random.split(key)
  eps = jax.random.normal(k_eps, z0.shape)
  assert float(loss(jnp.full(5, 3.0))) == pytest.approx(float(jnp.mean(eps ** 2)), rel=1e-6)
  assert float(loss(jnp.zeros(5).at[2].set(1.0))) == pytest.approx(
      float(jnp.mean(eps[..., 2] ** 2)), rel=1e-5)
