"""PRISM: diffusion over part tokens vs a global PCA and independent parts (arXiv 2504.04454).

A shape is a set of parts; each part label has a statistical shape model (whitened PCA of
corresponded points, :mod:`shapes.ssm`); each part becomes a token, its label embedded as
a sample of a Gaussian mixture component (plus an "empty" class) beside its SSM
coefficients (:mod:`shapes.tokens`); a denoiser learns the token set
(:mod:`shapes.diffusion`). Claims (means over seeds; the issue's reading of the paper's
headline, which reports these metrics on PartNet):

* PRISM's 1-NNA (Chamfer) is at least ``min_nna_gap`` lower than the global-PCA baseline's
  and lower than independent parts';
* its COV is no lower and its MMD no higher than the global PCA's;
* the part-existence patterns of ``num_samples`` generated shapes are within
  ``max_pattern_tv`` total variation of the training set's (an equally large held-out
  real sample's TV is reported beside it: the sampling-noise floor);
* at most ``max_violations`` of them break the category's structural rules.

Quick uses a cheaper variant (assumed, not PRISM's), ``slots='ordered'`` (slot ``j`` holds label
``j``, only "exists / empty" is categorical) with an MLP denoiser over the flattened slots
(the issue's prototype); full uses shuffled slots and the permutation-equivariant set
transformer, as PRISM's label channel implies. Both use v-prediction (``shapes/diffusion.py``
says why); the design sweeps behind the quick design are in the README ("PRISM").

Measured numbers are in the README ("PRISM") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/prism.py:quick
  python -m sweeps.launch --config sweeps/configs/prism.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # data_dir also holds the generated shapes cache.
  c = common.base("prism", variant, num_seeds=3)

  # Data (shapes.data): training shapes and held-out references, both from the run seed.
  c.category = "chair"
  c.num_train = 4000
  c.points_per_part = 128

  # Representation: c.tokens builds shapes.tokens.TokenSpec (num_labels: the category's parts).
  c.tokens = ml_collections.ConfigDict(dict(
      num_modes=12,  # SSM coefficients per part (q)
      alpha=3.0,  # GMM means alpha * e_k
      sigma=0.1,  # GMM component std
  ))
  c.slots = "ordered"  # 'ordered' (slot j = label j) or 'set' (shuffled slots)

  # Denoiser: c.denoiser builds shapes.diffusion.DenoiserConfig (dim and num_slots follow
  # from the tokens and the slots).
  c.denoiser = ml_collections.ConfigDict(dict(
      kind="mlp",  # 'set' (transformer over slots) or 'mlp' (flattened ordered slots)
      width=256,
      depth=3,
      heads=4,  # the transformer's
      prediction="v",  # 'v' or 'eps'
  ))
  # Diffusion.
  c.diffusion_steps = 200  # T (cosine schedule; ancestral DDPM sampling)
  c.label_weight = 1.0  # loss weight of the label channels (the geometry channels: 1)

  # Training: AdamW, linear warm-up then cosine decay to lr / 10.
  c.train_steps = 3000
  c.batch_size = 128
  c.lr = 1e-3
  c.warmup_steps = 100

  # Evaluation.
  c.num_samples = 2000  # generated (and held-out real) shapes for the structure statistics
  c.num_eval = 100  # generated vs held-out reference shapes for MMD / COV / 1-NNA
  c.eval_points = 512  # points per shape for the Chamfer metrics
  c.num_pictures = 8  # generated shapes drawn in the report

  # Claim thresholds.
  c.min_nna_gap = 0.10  # 1-NNA(global PCA) - 1-NNA(PRISM)
  c.max_pattern_tv = 0.05
  c.max_violations = 0.02

  if variant == "full":
    c.num_train = 2000
    c.points_per_part = 256
    c.slots = "set"
    c.denoiser.update(kind="set", width=128, depth=3)
    c.train_steps = 20000
    c.batch_size = 256
    c.num_eval = 200
    c.eval_points = 2048
  return c
