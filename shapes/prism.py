"""The PRISM pipeline (arXiv 2504.04454): part-SSM tokens -> token diffusion -> shapes.

A shape's existing parts are encoded by their label's SSM (:mod:`shapes.ssm`) and a GMM
label embedding into one token per part (:mod:`shapes.tokens`); a denoiser
(:mod:`shapes.diffusion`) is trained on fresh label noise (and, for shuffled slots, a
fresh slot order) every batch, sampled with ancestral DDPM, and decoded back to parts.
Inpainting keeps chosen slots exact and regenerates the rest, which edits a shape part by
part. Everything is a pure function of its key, so a batch of seeds is one ``vmap``:

>>> import jax, numpy as np, optax
>>> from shapes import data, ssm, tokens
>>> train = data.generate("chair", 64, seed=0, points_per_part=24)
>>> model = ssm.fit(train, 3)
>>> spec = tokens.TokenSpec(len(train.labels), 3)
>>> pipe = Pipeline(spec=spec, denoiser=diffusion.DenoiserConfig(spec.dim, width=16,
...     depth=1, num_slots=len(train.labels), kind="mlp"),
...     schedule=diffusion.Schedule.cosine(8), optimizer=optax.adam(1e-3),
...     train_steps=4, batch_size=8)
>>> coeffs = ssm.encode(model, train.points, np.arange(len(train.labels)))
>>> keys = jax.random.split(jax.random.key(0), 2)
>>> params, losses, z = jax.jit(jax.vmap(lambda k: pipe.generate(coeffs, train.exists, 5, k)))(
...     keys)
>>> losses.shape, z.shape
((2, 4), (2, 5, 5, 9))
>>> pipe.decode(model, z[0]).points.shape
(5, 5, 24, 3)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from shapes import diffusion, tokens
from shapes import ssm as ssm_lib

# Sub-keys of a run's key: the denoiser's initialisation, its training batches, the
# samples; an edit takes its own key.
KEY_INIT, KEY_TRAIN, KEY_SAMPLE = range(3)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Pipeline:
  """Train a token denoiser on one training set and generate shapes from it.

  Attributes:
    spec: the token layout (labels, SSM modes, GMM embedding).
    denoiser: the denoiser's configuration.
    schedule: the noise schedule (its length is the number of DDPM steps).
    optimizer: the training optimizer (with its learning-rate schedule).
    train_steps: training steps.
    batch_size: training shapes per step.
    shuffle: shuffle the slot order every batch (a permutation-equivariant denoiser);
      ``False`` keeps slots in label order, which :meth:`decode` then reads back.
    weights: per-channel loss weights ``[dim]`` (``None``: all ones).
    progress_every: a :func:`jaxfl.progress.tick` every this many training steps (0: none),
      so a long training reports progress and stops on Ctrl-C within that many steps.
  """

  spec: tokens.TokenSpec
  denoiser: diffusion.DenoiserConfig
  schedule: diffusion.Schedule
  optimizer: optax.GradientTransformation
  train_steps: int
  batch_size: int
  shuffle: bool = False
  weights: jax.Array | None = None
  progress_every: int = 0

  def train(self, coeffs, exists, key) -> tuple[dict, jax.Array]:
    """Train from scratch on ``coeffs [N, m, modes]`` / ``exists [N, m]``: the denoiser's
    parameters and the loss of every step ``[train_steps]``."""
    coeffs, exists = jnp.asarray(coeffs), jnp.asarray(exists)

    def make_batch(k):
      k_idx, k_tok = jax.random.split(k)
      idx = jax.random.randint(k_idx, (self.batch_size,), 0, coeffs.shape[0])
      return tokens.from_coeffs(self.spec, coeffs[idx], exists[idx], k_tok,
                                shuffle=self.shuffle)

    params = diffusion.init(self.denoiser, jax.random.fold_in(key, KEY_INIT))
    return diffusion.train(self.denoiser, self.schedule, params, make_batch, self.optimizer,
                           self.train_steps, jax.random.fold_in(key, KEY_TRAIN),
                           weights=self.weights, progress_every=self.progress_every)

  def sample(self, params, num: int, key) -> jax.Array:
    """``num`` token sets ``[num, m, dim]`` by ancestral DDPM."""
    eps_fn = diffusion.model_eps(self.denoiser, params, self.schedule)
    return diffusion.ddpm_sample(eps_fn, self.schedule, (num, self.spec.num_labels,
                                                         self.spec.dim), key)

  def generate(self, coeffs, exists, num: int, key) -> tuple[dict, jax.Array, jax.Array]:
    """:meth:`train` then :meth:`sample` from one key: ``(params, losses, tokens)``."""
    params, losses = self.train(coeffs, exists, key)
    return params, losses, self.sample(params, num, jax.random.fold_in(key, KEY_SAMPLE))

  def decode(self, ssm: ssm_lib.PartSSMs, z) -> tokens.Decoded:
    """Token sets to parts (points, existence, coefficients)."""
    return tokens.decode(self.spec, ssm, z, ordered=not self.shuffle)

  def inpaint(self, params, ssm: ssm_lib.PartSSMs, points, exists, keep, num: int, key
              ) -> tuple[jax.Array, jax.Array, tokens.Decoded]:
    """``num`` edits of one shape (``points [1, m, p, 3]``, ``exists [1, m]``): the slots
    where ``keep [m]`` is true stay exactly the shape's tokens, the rest are sampled.
    Returns the known tokens, the sampled ones (both ``[num, m, dim]``) and their decoding.
    """
    k_tok, k_sample = jax.random.split(key)
    known = tokens.encode(self.spec, ssm, points, exists, k_tok, shuffle=False)
    known = jnp.repeat(known, num, axis=0)
    mask = jnp.broadcast_to(jnp.asarray(keep), (num, self.spec.num_labels))
    z = diffusion.ddpm_sample(diffusion.model_eps(self.denoiser, params, self.schedule),
                              self.schedule, known.shape, k_sample, known=known,
                              known_mask=mask)
    return known, z, self.decode(ssm, z)
