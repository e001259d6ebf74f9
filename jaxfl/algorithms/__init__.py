"""Federated and distributed training algorithms, one module each."""

from jaxfl.algorithms.fedavg import (SERVER_OPTIMIZERS, FedAvg, RoundMetrics, ServerState,
                                     server_optimizer)
from jaxfl.algorithms.diloco import WAN, DiLoCo
from jaxfl.algorithms.fedpeft import FederatedPEFT
from jaxfl.algorithms.streaming_diloco import StreamingDiLoCo

__all__ = ["SERVER_OPTIMIZERS", "DiLoCo", "FedAvg", "FederatedPEFT", "RoundMetrics",
           "ServerState", "StreamingDiLoCo", "WAN", "server_optimizer"]
