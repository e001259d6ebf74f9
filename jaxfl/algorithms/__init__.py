"""Federated and distributed training algorithms, one module each, one protocol for all
(:mod:`jaxfl.algorithms.base`: ``init(params, key)`` and a pure ``round(state, inputs)``)."""

from jaxfl.algorithms.base import Algorithm, JitRound, check_algorithm
from jaxfl.algorithms.diloco import DiLoCo
from jaxfl.algorithms.fedavg import (
                                     SERVER_OPTIMIZERS,
                                     FedAvg,
                                     RoundMetrics,
                                     ServerState,
                                     server_optimizer,
)
from jaxfl.algorithms.fedpeft import FederatedPEFT, PEFTInputs
from jaxfl.algorithms.grouped_async import AirFedGA, GroupedAsync
from jaxfl.algorithms.streaming_diloco import StreamingDiLoCo

__all__ = ["SERVER_OPTIMIZERS", "AirFedGA", "Algorithm", "DiLoCo", "FedAvg", "FederatedPEFT",
           "GroupedAsync", "JitRound", "PEFTInputs", "RoundMetrics", "ServerState",
           "StreamingDiLoCo", "check_algorithm", "server_optimizer"]
