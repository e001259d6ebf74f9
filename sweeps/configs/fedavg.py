"""FedAvg on non-IID clients vs the same model trained centrally.

Claim (McMahan et al. 2017, arXiv 1602.05629): federated averaging over clients
with label-skewed data (Dirichlet alpha = 0.5) reaches nearly the accuracy of
centralized training on the pooled data: within ``accuracy_gap_points``.

Evaluation protocol (README, "How claims are evaluated"): both methods get the same
tuning budget, the client learning rate over ``client_lr_grid``, chosen by the final
accuracy on a validation split held out of the training set (``validation``) on
``num_tuning_seeds`` tuning seeds (``seed + 1000 + i``, never reported); the claim is
computed on the test split on the reported seeds. FedAvg's server step is plain averaging
(``server_lr`` 1, its definition), not tuned.

Measured numbers are in the README ("Experiments") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/fedavg.py:quick
  python -m sweeps.launch --config sweeps/configs/fedavg.py:full --workdir /tmp/runs
  python -m sweeps.launch --config sweeps/configs/fedavg.py:quick --sweep  # get_sweep()'s grid
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  c = common.base("fedavg", variant, num_seeds=5, num_tuning_seeds=2)

  # Data and partition.
  c.dataset = "digits"
  c.download = False  # catalog datasets need network once
  c.validation = 0.2  # fraction of each class's training samples held out for selection
  c.partition = "dirichlet"  # dirichlet | shards | iid
  c.alpha = 0.5
  c.shards_per_client = 2
  c.num_clients = 20
  c.min_client_size = 2

  # Model and local training.
  c.model = "small"  # see jaxfl.models.SIZES
  c.batch_size = 16
  c.client_lr = 0.05  # the host loop's (num_devices > 1, not tuned)
  c.client_lr_grid = (0.025, 0.05, 0.1)  # every method's tuning grid
  c.local_epochs = 2.0  # epochs over each client's own data per round
  c.max_local_steps = 64

  # Server.
  c.clients_per_round = 10
  c.server_optimizer = "fedavg"  # fedavg | fedavgm | fedadam | fedyogi | fedadagrad
  c.server_lr = 1.0
  c.num_rounds = 200
  c.eval_every = 10
  # > 1: shard_map clients over that many local devices; 0: all (CPU: one per core).
  c.num_devices = 1

  # Centralized baseline: the same model, optimizer and batch size on the pooled data, for
  # at least as many sample visits as FedAvg makes (200 rounds x ~8.5 online clients x 2
  # epochs x ~72 samples is ~170 epochs of the pooled data).
  c.central_epochs = 200

  # Device heterogeneity for the simulated clock.
  c.profiles_file = ""  # CSV table (jaxfl.sim.load_profiles); "" = sample lognormal
  c.compute_median = 2000.0  # samples / s
  c.uplink_median = 1.0e6  # bytes / s
  c.downlink_median = 1.0e7
  c.profile_sigma = 0.5
  c.availability_low = 0.7
  c.availability_high = 1.0

  c.checkpoint_every = 50

  # Claim threshold: FedAvg's median accuracy at most this many points below centralized.
  c.accuracy_gap_points = 3.0

  if variant == "full":
    c.dataset = "emnist"
    c.download = True
    c.model = "2nn"
    c.num_clients = 500
    c.clients_per_round = 50
    c.batch_size = 32
    c.num_rounds = 1000
    c.eval_every = 25
    c.central_epochs = 20
    c.max_local_steps = 256
    c.checkpoint_every = 100
  return c


# Server optimizers compared by the grid, each with a server learning rate of the order
# Reddi et al. (arXiv 2003.00295) report working for it (adaptive ones need far smaller
# steps than FedAvg's 1.0); starting points, not tuned here.
SERVER_LRS = {"fedavg": 1.0, "fedavgm": 0.3, "fedadam": 0.01, "fedyogi": 0.01,
              "fedadagrad": 0.03}


def get_sweep():
  """Methods x label skew: each server optimizer at Dirichlet alpha 0.1, 0.5 and 100 (~IID).

  Run it with ``--sweep``; each point reports under ``runs/fedavg/sweep/<point>/`` and
  ``runs/fedavg/sweep.md`` tabulates every point's claim.
  """
  return [{"server_optimizer": name, "server_lr": lr, "alpha": alpha}
          for name, lr in SERVER_LRS.items() for alpha in (0.1, 0.5, 100.0)]
