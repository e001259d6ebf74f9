"""Benchmark: PRISM sampling throughput and the cost of the 1-NNA metric.

Measured in one process, after compilation (sweeps/experiments/bench_shapes.py):

* shapes/s of sampling ``sample_batch`` part-token sets and decoding them to points, with
  ancestral DDPM over all ``diffusion_steps`` and with DDIM over ``ddim_steps``;
* seconds of 1-NNA-CD for ``nna_shapes`` generated vs ``nna_shapes`` reference shapes of
  ``nna_points`` points (three Chamfer distance matrices, then the leave-one-out
  classifier), with the Chamfer distance in :mod:`shapes.metrics`' coordinate-by-coordinate
  form and, as the baseline in the same process, the matmul form
  :math:`|x|^2 + |y|^2 - 2 x \\cdot y`.

Claim (median over repeats): DDIM with ``ddim_steps`` steps samples at least
``min_ddim_speedup`` times the shapes/s of DDPM with ``diffusion_steps`` (4x fewer
denoiser calls at 200 / 50; decoding and per-step overheads are shared, so only 2.5x is
required).

The issue's size, 200 x 200 shapes of 2,048 points (``full``), is 1.3 x 10^12 squared
distances, an accelerator's job; quick measures 64 x 64 shapes of 512 points.

Measured numbers are in the README ("Benchmark") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/bench_shapes.py:quick
  python -m sweeps.launch --config sweeps/configs/bench_shapes.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # seed: seeds the denoiser's random init and the clouds of each repeat
  # num_seeds: repeats of the whole measurement; claims take the median
  c = common.base("bench_shapes", variant, num_seeds=2, data_dir=False)

  # Sampling: a randomly initialised denoiser (throughput does not depend on the weights)
  # of the prism config's shape, and part SSMs fitted on a few generated shapes.
  c.category = "chair"
  c.tokens = ml_collections.ConfigDict(dict(num_modes=12, alpha=3.0, sigma=0.1))
  c.slots = "ordered"
  c.denoiser = ml_collections.ConfigDict(dict(kind="mlp", width=256, depth=3, heads=4,
                                              prediction="v"))
  c.diffusion_steps = 200
  c.ddim_steps = 50
  c.sample_batch = 256

  # 1-NNA: nna_shapes vs nna_shapes clouds of nna_points points (generated shapes).
  c.nna_shapes = 64
  c.nna_points = 512

  # Timing: warm-up calls, then timing_repeats timed calls per program, round-robin.
  c.warmup = 1
  c.timing_repeats = 3

  c.min_ddim_speedup = 2.5

  if variant == "full":
    c.slots = "set"
    c.denoiser.update(kind="set", width=128, depth=3)
    c.sample_batch = 2048
    c.nna_shapes = 200
    c.nna_points = 2048
    c.timing_repeats = 5
  return c
