"""optax GradientTransformations for federated and distributed training.

Reducing transforms (aggregators) are called inside the client map with one client's
update and collect over the named client axis; per-client transforms act on one
client's update. All chain with optax and with each other.
"""

from jaxfl.transforms._aggregate import WeightedMeanState, delta_aggregator, weighted_mean
from jaxfl.transforms.aircomp import AirCompState, aircomp_aggregate, aircomp_mean
from jaxfl.transforms.coverage import CoverageState, coverage_mean, depth_trained
from jaxfl.transforms.delay_comp import (
                                             CoCoDCState,
                                             DCASGDState,
                                             cocodc_correction,
                                             cocodc_merge,
                                             dc_asgd,
)
from jaxfl.transforms.lora_aggregate import (
                                             LoraAggregateState,
                                             fedit_mean,
                                             ffa_mean,
                                             flex_svd,
                                             stack_merge,
)
from jaxfl.transforms.masking import SkipInactiveState, skip_inactive

__all__ = ["WeightedMeanState", "delta_aggregator", "weighted_mean"]
__all__ += ["AirCompState", "aircomp_aggregate", "aircomp_mean"]
__all__ += ["LoraAggregateState", "fedit_mean", "ffa_mean", "flex_svd", "stack_merge"]
__all__ += ["CoCoDCState", "DCASGDState", "cocodc_correction", "cocodc_merge", "dc_asgd"]
__all__ += ["SkipInactiveState", "skip_inactive"]
__all__ += ["CoverageState", "coverage_mean", "depth_trained"]
