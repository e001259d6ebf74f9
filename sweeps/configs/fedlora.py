"""Federated LoRA (FedIT) vs federated full fine-tuning of the pre-trained byte-level LM.

Claims (FedIT, Zhang et al., arXiv 2305.05644; LoRA, Hu et al., arXiv 2106.09685), medians
over the reported seeds:

* checks (accounting fixed by the rank and the targets): LoRA trains at least
  ``min_reduction`` times fewer parameters than full fine-tuning, and uploads at least
  ``min_reduction`` times fewer bytes per round;
* reproduction: its final downstream *test* loss is within ``max_loss_ratio`` of full
  fine-tuning's (the issue's reading of LoRA's "comparable quality", assumed; arXiv
  2106.09685 reports task metrics on other models). The thresholds are fixed here.

Each client holds one downstream domain of the stdlib corpus (``asyncio``, ``concurrent``,
``ctypes``, ...: non-IID by construction) that pre-training never saw; retention is
measured on the held-out general domains (the forgetting FedBE sets out to reduce).
The model is ``lm_pretrain``'s (pre-trained first if it is not cached). The set-up (8
clients, 10 rounds of 4 local Adam steps, fresh optimizer state every round, rank 8,
alpha 16 on ``query``/``value``/``out``/``up``) is this project's small-scale choice,
assumed: FedIT's method text (arXiv 2305.05644) was not read; its averaging of every
adapter tensor by local data size is that of its public code.

Evaluation protocol (README, "How claims are evaluated"), fixed before the reported runs:

* the same tuning budget: FedIT and full fine-tuning each get ``len(lora_lr_grid)`` =
  ``len(full_lr_grid)`` grid points over their own step size, the client (Adam) learning
  rate, each grid centred on the value used before the protocol (3e-3 and 5e-4, set by
  hand, untuned) and spaced by about 3x. The server step is FedAvg's 1 (the server takes the
  clients' weighted mean: its definition), not tuned, for both;
* the point each method keeps has the lowest final downstream *validation* loss, mean over
  ``num_tuning_seeds`` tuning seeds (``seed + 1000 + i``, never reported);
* the held-out files of every domain are cut into windows and dealt into validation and
  test windows (disjoint, equal in number, the deal seeded by ``seed``): tuning runs are
  evaluated on validation windows, reported runs on test windows, which nothing was chosen
  on. The chosen rates are in the report's tuning table.

Measured numbers are in the README ("Language model and PEFT toolkit") and in the report
this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/fedlora.py:quick
  python -m sweeps.launch --config sweeps/configs/fedlora.py:quick --config.seed=100
  python -m sweeps.launch --config sweeps/configs/fedlora.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common
from sweeps.configs.lm_pretrain import pretrain_config


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # cache_dir holds the pre-trained model (lm_pretrain).
  # num_tuning_seeds: seeds seed+1000, ... that pick each method's client learning rate
  # (one in quick, for the CPU budget: in a timing launch at seed 5000, each of its two
  # tuning seeds alone kept the same points, by a validation-loss margin >= 0.014).
  c = common.base("fedlora", variant, num_seeds=3, num_tuning_seeds=1, cache_dir=True)
  c.pretrain = pretrain_config(variant)

  # Clients: one downstream domain each (jaxfl.data.corpus.CLIENT_DOMAINS, in order).
  c.num_clients = 8
  c.clients_per_round = 8
  c.seq_len = 64
  c.windows_per_client = 256  # training windows per client (evenly spread over its text)
  # Held-out windows per domain: up to this many validation and as many disjoint test ones.
  c.eval_windows = 32

  # Local training: Adam, fresh every round; the server averages (FedAvg, server step 1).
  c.batch_size = 8
  c.local_steps = 4
  c.num_rounds = 10
  c.eval_every = 5
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.lora_targets = ("query", "value", "out", "up")
  # Each method's tuning grid over its client learning rate: the same number of points,
  # centred on the rates used before the protocol. On tuning seeds LoRA's best is the top
  # point; a probe of tuning seed 6000 at 3e-2 and 1e-1 ended far worse (validation loss
  # 2.80 and 3.09 vs 2.11 at 1e-2), so its optimum lies inside the grid's reach.
  c.lora_lr_grid = (1e-3, 3e-3, 1e-2)
  c.full_lr_grid = (1.7e-4, 5e-4, 1.5e-3)

  # Simulated clock: windows per second, bytes per second (lognormal device profiles).
  c.compute_median = 20.0
  c.uplink_median = 1.0e6
  c.downlink_median = 1.0e7
  c.profile_sigma = 0.5

  # Claim thresholds.
  c.min_reduction = 10.0  # full / LoRA trainable parameters and uplink bytes
  c.max_loss_ratio = 1.05  # LoRA / full final downstream loss

  if variant == "full":
    c.num_tuning_seeds = 2
    c.num_clients = 14
    c.clients_per_round = 14
    c.seq_len = 128
    c.windows_per_client = 2048
    c.eval_windows = 128
    c.batch_size = 16
    c.local_steps = 10
    c.num_rounds = 50
    c.eval_every = 5
  return c
