"""Planners: decisions a federated system takes before a round (e.g. AirComp power control)."""

from jaxfl.planners.fragments import (NEVER_SENT, PATTERNS, allreduce_bytes, blocking_sync_time,
                                      fragment_drift, fragment_labels, fragment_mask,
                                      fragment_sizes, fragment_units, layer_units, overlap_stall,
                                      overlap_steps, select_fragment, send_interval,
                                      streaming_fragment_at, streaming_send_step, transfer_time,
                                      transmissions_per_interval)
from jaxfl.planners.power import (POLICIES, PowerControl, aggregation_mse, full_power,
                                  optimal_power, power_control, truncated_inversion,
                                  zero_forcing)

__all__ = ["POLICIES", "PowerControl", "aggregation_mse", "full_power", "optimal_power",
           "power_control", "truncated_inversion", "zero_forcing",
           "NEVER_SENT", "PATTERNS", "allreduce_bytes", "blocking_sync_time", "fragment_drift",
           "fragment_labels", "fragment_mask", "fragment_sizes", "fragment_units", "layer_units",
           "overlap_stall", "overlap_steps", "select_fragment", "send_interval",
           "streaming_fragment_at", "streaming_send_step", "transfer_time",
           "transmissions_per_interval"]
