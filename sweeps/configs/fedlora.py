"""Federated LoRA (FedIT) vs federated full fine-tuning of the pre-trained byte-level LM.

Claims (FedIT, Zhang et al., arXiv 2305.05644; LoRA, Hu et al., arXiv 2106.09685), medians
over seeds:

* LoRA trains at least ``min_reduction`` times fewer parameters than full fine-tuning,
* and uploads at least ``min_reduction`` times fewer bytes per round,
* at a final downstream validation loss within ``max_loss_ratio`` of full fine-tuning's.

Each client holds one downstream domain of the stdlib corpus (``asyncio``, ``concurrent``,
``ctypes``, ...: non-IID by construction) that pre-training never saw; retention is
measured on the held-out general domains (the forgetting FedBE sets out to reduce).
The model is ``lm_pretrain``'s (pre-trained first if it is not cached).

Measured numbers are in the README ("Language model and PEFT toolkit") and in the report
this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/fedlora.py:quick
  python -m sweeps.launch --config sweeps/configs/fedlora.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common
from sweeps.configs.lm_pretrain import pretrain_config


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # cache_dir holds the pre-trained model (lm_pretrain).
  c = common.base("fedlora", variant, num_seeds=2, cache_dir=True)
  c.pretrain = pretrain_config(variant)

  # Clients: one downstream domain each (jaxfl.data.corpus.CLIENT_DOMAINS, in order).
  c.num_clients = 8
  c.clients_per_round = 8
  c.seq_len = 64
  c.windows_per_client = 256  # training windows per client (evenly spread over its text)
  c.eval_windows = 32  # validation windows per domain

  # Local training: Adam, fresh every round (FedIT), server averages (FedAvg, lr 1).
  c.batch_size = 8
  c.local_steps = 4
  c.num_rounds = 10
  c.eval_every = 5
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.lora_targets = ("query", "value", "out", "up")
  c.lora_lr = 3e-3
  c.full_lr = 5e-4

  # Simulated clock: windows per second, bytes per second (lognormal device profiles).
  c.compute_median = 20.0
  c.uplink_median = 1.0e6
  c.downlink_median = 1.0e7
  c.profile_sigma = 0.5

  # Claim thresholds.
  c.min_reduction = 10.0  # full / LoRA trainable parameters and uplink bytes
  c.max_loss_ratio = 1.05  # LoRA / full final downstream loss

  if variant == "full":
    c.num_seeds = 3
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
