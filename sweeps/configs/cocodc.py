"""CoCoDC vs Streaming DiLoCo vs DiLoCo: cross-region LM training with overlapped, stale syncs.

Claims (CoCoDC, arXiv 2504.17672: "up to 21.0% fewer training steps to a comparable
perplexity than Streaming DiLoCo"), means over the reported seeds, at the long overlap ``τ``:

* CoCoDC reaches Streaming DiLoCo's target loss in at least ``min_step_reduction`` fewer
  steps than Streaming DiLoCo,
* and its final test loss is no higher than Streaming DiLoCo's;
* against blocking DiLoCo, in simulated wall-clock time: CoCoDC reaches DiLoCo's target
  loss sooner than DiLoCo (strictly).

``M`` workers, one stdlib domain each (non-IID: ``jaxfl.data.corpus.CLIENT_DOMAINS``),
train a byte-level transformer from scratch: a small-scale stand-in, **assumed** here, for
the papers' C4 runs of LLaMA-style models.

Evaluation protocol (DESIGN.md contract 11, the README's "How claims are evaluated"),
fixed before the reported runs:

* **Splits.** The evaluation windows are ``eval_windows`` evenly spaced windows of each
  worker domain's *validation* files (held-out files, disjoint from the training files),
  split alternately: even windows are the validation split (tuning, targets), odd ones
  the test split (reported curves and claims). 256 per domain: on trained DiLoCo models
  of tuning seeds 1000-1002 the two halves' losses agree within 0.003 nats (at 32 per
  domain they differed by 0.18, at 128 by 0.05).
* **Seeds.** Hyperparameters and targets come from ``num_tuning_seeds`` tuning seeds
  (``seed + 1000 + i``); claims use the reported seeds ``seed .. seed + num_seeds - 1``.
* **Same tuning budget.** Every method (DiLoCo, and Streaming DiLoCo and CoCoDC at each
  ``τ``) gets the same grid over its own step sizes, ``inner_lr_grid`` x ``outer_lr_grid``
  (4 points in ``quick``, 6 in ``full``), and keeps the point with the lowest mean final
  validation loss over the tuning seeds.
* **Fixed knobs**, not tuned: Streaming DiLoCo's ``alpha = 0.5`` (the default of
  arXiv 2501.18512) and CoCoDC's ``lam0 = 0.5`` (the value of the CoCoDC authors' run
  script for arXiv 2504.17672; their code comment quotes 0.2 as the paper's). Before this
  protocol both were grid knobs (outer lr x alpha in {0.5, 0} / lam0 in {0.2, 0.5}, on
  tuning seed 1000 with the fixed inner lr 3e-3): the grid chose alpha = 0.5 and
  lam0 = 0.5 at both overlaps. CoCoDC sends every ``h = H // P`` steps (``N = P``
  transmissions per interval, **assumed**: the authors' code takes ``N`` as an argument).
* **Targets**, fixed by the tuning runs alone: a baseline's target is its median
  validation loss over the tuning seeds, at its chosen point, after ``target_step`` inner
  steps (70% of the run: every run has the same ``num_steps``, so the target lies inside
  every method's run and a comparable method can reach and hold it before the end; a
  reported run of the baseline cannot move it). Streaming DiLoCo at each ``τ`` is the
  baseline of the step claim, DiLoCo of the time claim.
* **Time to target** (:func:`jaxfl.evaluation.time_to_held_target`): the first point of a
  common grid from which the test loss stays at or below the target for
  ``target_window`` more grid points; the first passage (window 0) is reported beside it.
  Steps: every method is evaluated at the same steps (every ``eval_every``), the common
  step grid. Simulated time: every curve is linearly interpolated onto one grid of
  simulated times for all methods, spacing ``eval_every * step_time``, from 0 to the
  longest run's end; past a run's own end the curve has no value (a target not held by
  then counts as never reached).

Measured numbers are in the README ("CoCoDC") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/cocodc.py:quick
  python -m sweeps.launch --config sweeps/configs/cocodc.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  c = common.base("cocodc", variant, num_seeds=4, num_tuning_seeds=1)

  # Model: a from-scratch byte-level transformer, the block of jaxfl.models.transformer.LMConfig
  # (its max_len is seq_len).
  c.model = ml_collections.ConfigDict(dict(num_layers=4, d_model=32, num_heads=2, d_ff=64))
  c.seq_len = 32

  # Workers: one domain each; windows of seq_len bytes.
  c.num_workers = 4
  c.windows_per_worker = 1024
  c.eval_windows = 256  # per domain, from its validation files: alternately validation / test

  # Inner AdamW (warmup, cosine to 10% of the peak, clipping), per worker, persistent
  # across syncs; its peak learning rate is tuned (inner_lr_grid: a factor 2 around 3e-3,
  # the fixed value before this protocol).
  c.batch_size = 4
  c.inner_lr_grid = (2e-3, 4e-3)
  c.warmup_steps = 24
  c.weight_decay = 0.1
  c.clip_norm = 1.0

  # Synchronisation: H inner steps per sync of each fragment; P fragments of the
  # [embed, block_1..L, ln_f+head] units; CoCoDC sends every H // P steps.
  c.num_steps = 240
  c.inner_steps = 24
  c.num_fragments = 3
  c.fragment_pattern = "strided"
  c.overlaps = (2, 12)  # τ: short, and long (>= the fragment interval H // P)
  c.eval_every = 8  # a multiple that divides inner_steps; DiLoCo evaluates every H

  # Outer Nesterov SGD (momentum 0.9), learning rate tuned: 0.4 (the CoCoDC authors' code
  # default) and 0.7 (DiLoCo's, arXiv 2311.08105).
  c.outer_momentum = 0.9
  c.outer_lr_grid = (0.4, 0.7)
  # Fixed method knobs (module docstring: how they were set).
  c.alpha = 0.5  # Streaming DiLoCo's mixing weight of the local value
  c.lam0 = 0.5  # CoCoDC's delay-compensation strength

  # Simulated clock: seconds per inner step; WAN bytes/s and latency per all-reduce
  # (the full model's all-reduce here takes ~16 steps, a fragment's ~6).
  c.step_time = 0.1
  c.wan = ml_collections.ConfigDict(dict(bandwidth=2.0e5, latency=0.05))  # jaxfl.sim.WAN

  # Targets and claim thresholds.
  c.target_step = 168  # a multiple of inner_steps: the baseline's tuning loss there
  c.target_window = 3  # grid points a reached target must hold for
  c.min_step_reduction = 0.10  # CoCoDC vs Streaming DiLoCo, steps to the latter's target

  if variant == "full":
    c.num_seeds = 5
    c.num_tuning_seeds = 2
    c.model.update(num_layers=8, d_model=128, num_heads=4, d_ff=512)
    c.seq_len = 64
    c.windows_per_worker = 8192
    c.eval_windows = 256
    c.batch_size = 16
    c.warmup_steps = 200
    c.num_steps = 4000
    c.inner_steps = 100
    c.num_fragments = 4
    c.overlaps = (5, 25, 50)
    c.eval_every = 25
    c.outer_lr_grid = (0.4, 0.7, 1.0)
    c.wan.bandwidth = 1.0e6
    c.target_step = 2800
  return c
