"""Simulation of system heterogeneity: device profiles, simulated clocks, wireless channels."""

from jaxfl.sim.channel import (aircomp_upload_time, digital_upload_time, fading_gain_sq,
                               noise_var_from_snr_db, shannon_rate)
from jaxfl.sim.clock import client_times, round_time, tree_bytes
from jaxfl.sim.profiles import (DeviceProfiles, load_profiles, sample_profiles, save_profiles,
                                uniform_profiles)

__all__ = ["DeviceProfiles", "client_times", "load_profiles", "round_time", "sample_profiles",
           "save_profiles", "tree_bytes", "uniform_profiles"]
__all__ += ["aircomp_upload_time", "digital_upload_time", "fading_gain_sq",
            "noise_var_from_snr_db", "shannon_rate"]
