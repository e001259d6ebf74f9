"""Planners: decisions a federated system takes before a round (AirComp power control, worker
grouping, which model fragment to send); what things cost lives in :mod:`jaxfl.sim`."""

from jaxfl.planners.fragments import (
                                      NEVER_SENT,
                                      PATTERNS,
                                      fragment_drift,
                                      fragment_labels,
                                      fragment_mask,
                                      fragment_sizes,
                                      fragment_units,
                                      layer_units,
                                      select_fragment,
                                      send_interval,
                                      streaming_fragment_at,
                                      streaming_send_step,
                                      transmissions_per_interval,
)
from jaxfl.planners.power import (
                                      POLICIES,
                                      PowerControl,
                                      aggregation_mse,
                                      full_power,
                                      optimal_power,
                                      power_control,
                                      truncated_inversion,
                                      zero_forcing,
)

__all__ = ["POLICIES", "PowerControl", "aggregation_mse", "full_power", "optimal_power",
           "power_control", "truncated_inversion", "zero_forcing",
           "NEVER_SENT", "PATTERNS", "fragment_drift", "fragment_labels", "fragment_mask",
           "fragment_sizes", "fragment_units", "layer_units", "select_fragment", "send_interval",
           "streaming_fragment_at", "streaming_send_step", "transmissions_per_interval"]
