"""CoCoDC vs Streaming DiLoCo vs DiLoCo: cross-region LM training with overlapped, stale syncs.

Claims (CoCoDC, arXiv 2504.17672: "up to 21.0% fewer training steps to a comparable
perplexity than Streaming DiLoCo"), means over seeds, at the long overlap ``τ``:

* CoCoDC reaches Streaming DiLoCo's final evaluation loss in at least ``min_step_reduction``
  fewer steps,
* and its final evaluation loss is no higher than Streaming DiLoCo's;
* against blocking DiLoCo, in simulated wall-clock time: CoCoDC reaches DiLoCo's final
  evaluation loss sooner.

``M`` workers, one stdlib domain each (non-IID: ``jaxfl.data.corpus.CLIENT_DOMAINS``),
train a byte-level transformer from scratch. Every method's outer learning rate (and
Streaming DiLoCo's ``alpha``, CoCoDC's ``lam0``) is chosen from the grids below by the
validation loss of ``num_tuning_seeds`` tuning seeds (``seed + 1000 + i``, never reported),
per ``τ``; the reported runs evaluate on held-out windows disjoint from the tuning ones.

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
  c.eval_windows = 32  # validation windows per domain, split alternately into tuning/test

  # Inner AdamW (warmup, cosine to 10%, clipping), per worker, persistent across syncs.
  c.batch_size = 4
  c.inner_lr = 3e-3
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

  # Outer Nesterov SGD (momentum 0.9); the tuning grids.
  c.outer_momentum = 0.9
  c.outer_lr_grid = (0.4, 0.7)
  c.alpha_grid = (0.5, 0.0)  # Streaming DiLoCo's mixing
  c.lam0_grid = (0.2, 0.5)  # CoCoDC's delay compensation

  # Simulated clock: seconds per inner step; WAN bytes/s and latency per all-reduce
  # (the full model's all-reduce here takes ~16 steps, a fragment's ~6).
  c.step_time = 0.1
  c.wan = ml_collections.ConfigDict(dict(bandwidth=2.0e5, latency=0.05))  # jaxfl.sim.WAN

  # Claim thresholds.
  c.min_step_reduction = 0.10  # CoCoDC vs Streaming DiLoCo, steps to the latter's final loss

  if variant == "full":
    c.num_seeds = 5
    c.num_tuning_seeds = 2
    c.model.update(num_layers=8, d_model=128, num_heads=4, d_ff=512)
    c.seq_len = 64
    c.windows_per_worker = 8192
    c.eval_windows = 128
    c.batch_size = 16
    c.warmup_steps = 200
    c.num_steps = 4000
    c.inner_steps = 100
    c.num_fragments = 4
    c.overlaps = (5, 25, 50)
    c.eval_every = 25
    c.outer_lr_grid = (0.4, 0.7, 1.0)
    c.alpha_grid = (0.5, 0.0)
    c.lam0_grid = (0.2, 0.5)
    c.wan.bandwidth = 1.0e6
  return c
