"""Benchmark: throughput of a federated round through jaxfl's client-axis runtime.

One FedAvg round (K clients x local steps x batch, all clients participating) is
timed after compilation and compared, in the same process, with

* centralized training of the same model on the same number of samples in sequence,
* the same round as a Python loop over clients calling a jitted local-training
  function (the per-client pattern of fedjax/Flower-style frameworks),
* a hand-written jitted vmap round with no jaxfl runtime (the runtime's overhead),
* a large dense matmul (the machine's practical FLOP/s peak),

and the time per client-step is measured as K grows. "Seeds" are repeats of the
whole measurement.

Launch:
  python -m sweeps.launch --config sweeps/configs/bench_fl.py:quick
  python -m sweeps.launch --config sweeps/configs/bench_fl.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # seed: seeds the partition, the model init and the round keys of each repeat
  # num_seeds: repeats of the whole measurement; claims take the median
  c = common.base("bench_fl", variant, num_seeds=3)

  # Data: the digits task split over the round's clients.
  c.dataset = "digits"
  c.partition = "iid"  # iid | dirichlet (changes n_max, hence the padded work)
  c.alpha = 0.5  # Dirichlet concentration when partition == "dirichlet"

  # The measured round: K clients, all participating, fixed local steps.
  c.model = "small"  # MLP 64-128-10 (jaxfl.models.SIZES)
  c.num_clients = 64  # K = clients_per_round = num_clients
  c.local_steps = 5
  c.batch_size = 32
  c.client_lr = 0.05
  # 0: shard_map over all local devices (on CPU the launcher makes one per core, so the
  # round uses every core, as clients are independent); 1: vmap on one device.
  c.num_devices = 0

  # Timing: warm-up calls (compile + caches), then timed calls; the median is reported.
  c.warmup = 2
  c.repeats = 11
  c.matmul_size = 2048  # float32 n x n @ n x n, 2 n^3 flops: the practical peak

  # K-scaling of the round on synthetic clients of a fixed size (drawn with replacement
  # from the training set: with 512 clients digits has fewer samples than clients).
  c.scaling_clients = (8, 64, 512)
  c.scaling_samples_per_client = 32

  # Claim thresholds.
  c.min_round_vs_centralized = 1.0  # samples/s of the round / centralized
  c.min_round_vs_client_loop = 1.5  # samples/s of the round / Python loop over clients
  c.max_time_per_client_step_growth = 1.3  # max_K t_step(K) / t_step(smallest K)

  if variant == "full":
    c.num_seeds = 5
    c.warmup = 3
    c.repeats = 20
    c.matmul_size = 8192
    c.scaling_clients = (8, 64, 512, 4096)
  return c


def get_sweep():
  """A small grid: round size (clients) and amount of local work per client."""
  return [{"num_clients": k, "local_steps": s} for k in (16, 64, 256) for s in (1, 5)]
