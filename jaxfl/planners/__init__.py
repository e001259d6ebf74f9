"""Planners: decisions a federated system takes before a round (e.g. AirComp power control)."""

from jaxfl.planners.power import (POLICIES, PowerControl, aggregation_mse, full_power,
                                  optimal_power, power_control, truncated_inversion,
                                  zero_forcing)

__all__ = ["POLICIES", "PowerControl", "aggregation_mse", "full_power", "optimal_power",
           "power_control", "truncated_inversion", "zero_forcing"]
