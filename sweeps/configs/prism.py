"""PRISM: diffusion over part tokens vs a global PCA and independent parts (arXiv 2504.04454).

A shape is a set of parts; each part label has a statistical shape model (whitened PCA of
corresponded points, :mod:`shapes.ssm`); each part becomes a token, its label embedded as
a sample of a Gaussian mixture component (plus an "empty" class) beside its SSM
coefficients (:mod:`shapes.tokens`); a denoiser learns the token set
(:mod:`shapes.diffusion`). Claims (means over seeds; the issue's reading of the paper's
headline, assumed: PRISM's numbers and tables were not read, arXiv 2504.04454), all
reproductions, computed against the **test** references:

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

Evaluation protocol (README, "How claims are evaluated"):

* held-out shapes per seed (``load(category, 'test', num_samples + num_eval)``): the first
  ``num_samples`` are the real sample for the structure statistics, and the first
  ``num_eval`` of those the **validation** references; the ``num_eval`` after them are the
  **test** references, which no design choice looked at. Claims use the test references;
  the Chamfer metrics against the validation references are reported beside them
  (``val_*``) for the record;
* **no tuning grid**, for any method: nothing is chosen inside a launch. PRISM's
  denoiser and training knobs are fixed values, set as the comments below say: most by
  hand on seeds 0-2 against what are now the validation references, before this protocol
  existed (the README's earlier table also reported seeds 100-102 at those references, as
  a check). The baselines have no step size to tune: the global PCA keeps every mode (the
  training covariance exactly), independent parts reuse PRISM's part SSMs and the
  training existence rates. So the default seeds' claims are on seeds the design was
  chosen on, but against test references it never saw; ``--config.seed=100`` adds seeds
  it was not chosen on, against their own unseen test references.

Measured numbers are in the README ("PRISM") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/prism.py:quick
  python -m sweeps.launch --config sweeps/configs/prism.py:quick --config.seed=100
  python -m sweeps.launch --config sweeps/configs/prism.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # data_dir also holds the generated shapes cache.
  c = common.base("prism", variant, num_seeds=3)

  # Data (shapes.data, procedural; assumed, PRISM uses PartNet): training shapes and
  # held-out shapes, both from the run seed. Sizes set by hand for the CPU budget.
  c.category = "chair"
  c.num_train = 4000
  c.points_per_part = 128

  # Representation: c.tokens builds shapes.tokens.TokenSpec (num_labels: the category's parts).
  # GMM constants: assumed (GMCD-style fixed components, arXiv 2303.04635; PRISM's values
  # were not read), set by hand before the protocol; num_modes set by hand on seeds 0-2.
  c.tokens = ml_collections.ConfigDict(dict(
      num_modes=12,  # SSM coefficients per part (q)
      alpha=3.0,  # GMM means alpha * e_k
      sigma=0.1,  # GMM component std
  ))
  c.slots = "ordered"  # 'ordered' (slot j = label j) or 'set' (shuffled slots)

  # Denoiser: c.denoiser builds shapes.diffusion.DenoiserConfig (dim and num_slots follow
  # from the tokens and the slots). Kind, width and depth: chosen by hand on seeds 0-2
  # before the protocol (PRISM's denoiser was not read); v-prediction: chosen by hand in
  # the README's design sweeps (one seed), before the protocol.
  c.denoiser = ml_collections.ConfigDict(dict(
      kind="mlp",  # 'set' (transformer over slots) or 'mlp' (flattened ordered slots)
      width=256,
      depth=3,
      heads=4,  # the transformer's
      prediction="v",  # 'v' or 'eps'
  ))
  # Diffusion: T and the cosine schedule assumed (standard DDPM practice), set by hand;
  # label_weight chosen by hand in the README's design sweeps (1 against 2 and 5).
  c.diffusion_steps = 200  # T (cosine schedule; ancestral DDPM sampling)
  c.label_weight = 1.0  # loss weight of the label channels (the geometry channels: 1)

  # Training: AdamW, linear warm-up then cosine decay to lr / 10. Steps, batch, lr and
  # warm-up chosen by hand on seeds 0-2 before the protocol (steps: the CPU budget).
  c.train_steps = 3000
  c.batch_size = 128
  c.lr = 1e-3
  c.warmup_steps = 100

  # Evaluation (sizes set by the CPU budget, not tuned).
  c.num_samples = 2000  # generated (and held-out real) shapes for the structure statistics
  c.num_eval = 100  # generated vs reference shapes (validation and test) for MMD/COV/1-NNA
  c.eval_points = 512  # points per shape for the Chamfer metrics
  c.num_pictures = 8  # generated shapes drawn in the report

  # Claim thresholds (the issue's, assumed; fixed before any reported run).
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
