"""Federated and distributed training algorithms, one module each."""

from jaxfl.algorithms.fedavg import (SERVER_OPTIMIZERS, FedAvg, RoundMetrics, ServerState,
                                     server_optimizer)

__all__ = ["SERVER_OPTIMIZERS", "FedAvg", "RoundMetrics", "ServerState", "server_optimizer"]
