"""Federated and distributed training algorithms, one module each."""

from jaxfl.algorithms.fedavg import (SERVER_OPTIMIZERS, FedAvg, RoundMetrics, ServerState,
                                     server_optimizer)
from jaxfl.algorithms.diloco import WAN, DiLoCo
from jaxfl.algorithms.fedpeft import FederatedPEFT

__all__ = ["SERVER_OPTIMIZERS", "DiLoCo", "FedAvg", "FederatedPEFT", "RoundMetrics",
           "ServerState", "WAN", "server_optimizer"]
