"""Cost models of the simulated clocks: device profiles, synchronous rounds, wireless uplinks
(fading, Shannon rates, AirComp and digital upload times), wide-area all-reduces, and the
compute and link costs of LoRA fine-tuning at a depth on tiered devices."""

from jaxfl.sim.channel import (
                               FADING,
                               UPLINKS,
                               Comm,
                               aircomp_upload_time,
                               digital_upload_time,
                               fading_gain_sq,
                               group_upload_time,
                               noise_var_from_snr_db,
                               shannon_rate,
)
from jaxfl.sim.clock import client_times, round_time, tree_bytes
from jaxfl.sim.devices import (
                               Devices,
                               StepCosts,
                               config_times,
                               device_tiers,
                               round_times,
                               step_costs,
                               step_flops,
)
from jaxfl.sim.network import (
                               WAN,
                               allreduce_bytes,
                               blocking_sync_time,
                               overlap_stall,
                               overlap_steps,
                               transfer_time,
)
from jaxfl.sim.profiles import (
                               DeviceProfiles,
                               load_profiles,
                               sample_profiles,
                               save_profiles,
                               uniform_profiles,
)

__all__ = ["DeviceProfiles", "client_times", "load_profiles", "round_time", "sample_profiles",
           "save_profiles", "tree_bytes", "uniform_profiles"]
__all__ += ["FADING", "UPLINKS", "Comm", "aircomp_upload_time", "digital_upload_time",
            "fading_gain_sq", "group_upload_time", "noise_var_from_snr_db", "shannon_rate"]
__all__ += ["WAN", "allreduce_bytes", "blocking_sync_time", "overlap_stall", "overlap_steps",
            "transfer_time"]
__all__ += ["Devices", "StepCosts", "config_times", "device_tiers", "round_times", "step_costs",
            "step_flops"]
