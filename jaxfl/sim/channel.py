r"""Wireless uplink: block-fading channel gains, noise, rates and upload times.

A worker ``k`` sees the complex channel :math:`h_k`, constant for one round (block
fading) and redrawn independently the next. It factors into a large-scale gain
:math:`L_k` (path loss and shadowing, fixed per worker) and small-scale fading:

.. math::
  h_k = \sqrt{L_k} \left( \sqrt{\tfrac{\kappa}{\kappa + 1}}
        + \sqrt{\tfrac{1}{\kappa + 1}}\, z_k \right), \qquad z_k \sim \mathcal{CN}(0, 1),

Rician with K-factor :math:`\kappa` (line-of-sight power over scattered power);
:math:`\kappa = 0` is Rayleigh fading, where :math:`|h_k|^2 = L_k \cdot \mathrm{Exp}(1)`.
In both cases :math:`E|h_k|^2 = L_k`.

Upload times compare the ways a group of workers can send an ``n``-entry update
(:func:`group_upload_time` prices a whole group's upload on one round's channel):

* digital orthogonal access: each worker sends ``n * q`` bits at its Shannon rate
  :math:`B \log_2(1 + P |h|^2 / \sigma^2)`;
* over-the-air computation (AirComp): every worker of the group transmits its analog
  entries at once, ``v`` entries per channel use, so the group needs ``n / (v B)``
  seconds whatever its size (the server receives the sum; see :mod:`jaxfl.planners.power`).

**Channel-use convention** (fixed before any reported run; the two schemes share the
complex baseband channel of ``B`` complex uses per second): digital access is charged the
complex channel's Shannon rate, and AirComp one *real* entry per complex use (``v = 1``,
:attr:`Comm.values_per_use`): the power policy and MSE of :mod:`jaxfl.planners.power`
are those of a real-valued superposition, and the quadrature component is left unused.
This is the conservative choice for AirComp (a scheme sending entries on both the
in-phase and quadrature components, ``v = 2``, halves its upload time); assumed, as is
the whole real-valued channel model, for Air-FedGA (arXiv 2507.05704), whose text was
not available.

Parameter values follow the Air-FedGA reproduction notes (arXiv 2507.05704): ``L_k ~
U(0.2, 1)``, Rayleigh fading redrawn each round, ``P = 1``, SNR ``P / sigma^2`` = 10 dB.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxfl.errors import ConfigError, check, check_number

FADING = ("rayleigh", "rician")
#: How a group uploads: over the air; digitally, each member alone on its own band (the
#: group waits for its slowest member); digitally one member after another (TDMA); or
#: the noiseless reference with TDMA timing.
UPLINKS = ("aircomp", "digital", "tdma", "ideal")


@dataclasses.dataclass(frozen=True)
class Comm:
  r"""A wireless uplink's cost model (seconds; a parameter is one real channel use over the
  air, or ``bits_per_param`` bits digitally).

  Attributes:
    bandwidth_hz: channel uses per second of the uplink (AirComp and digital alike).
    bits_per_param: bits of one parameter in a digital upload.
    noise_var: receiver noise power :math:`\sigma^2` (``P / SNR``).
    max_power: transmit power limit :math:`P_k` (the same for every worker).
    download_time: seconds to broadcast the global model to a group.
    max_upload_time: cap on one digital upload (a deep fade would otherwise stall it).
    fading: ``rayleigh`` or ``rician`` block fading; ``rician_k`` its K-factor.
    values_per_use: real model entries one AirComp channel use carries (1: the real part
      only, the module's convention; 2: in-phase and quadrature).
  """

  bandwidth_hz: float
  bits_per_param: float
  noise_var: float
  max_power: float = 1.0
  download_time: float = 0.0
  max_upload_time: float = float("inf")
  fading: str = "rayleigh"
  rician_k: float = 0.0
  values_per_use: float = 1.0

  def __post_init__(self):
    check_number(self.bandwidth_hz, "bandwidth_hz", low=0, strict=True, unit="channel uses/s")
    check_number(self.bits_per_param, "bits_per_param", low=0, strict=True)
    check_number(self.max_power, "max_power", low=0, strict=True)
    check_number(self.noise_var, "noise_var", low=0)
    check_number(self.download_time, "download_time", low=0, unit="seconds")
    check_number(self.max_upload_time, "max_upload_time", low=0, strict=True, finite=False,
                 unit="seconds")
    check(self.values_per_use in (1.0, 2.0), "values_per_use",
          "1 (real entries) or 2 (in-phase and quadrature)", self.values_per_use)
    if self.fading not in FADING:
      raise ConfigError("fading", f"one of {FADING}", self.fading)
    check_number(self.rician_k, "rician_k", low=0)
    check(self.fading == "rician" or self.rician_k == 0, "rician_k",
          "0 with fading='rayleigh' (set fading='rician' for a line-of-sight path)", self.rician_k)


def fading_gain_sq(key: jax.Array, path_gain: jax.Array, *, fading: str = "rayleigh",
                   rician_k: float = 0.0) -> jax.Array:
  r"""Power gains :math:`|h_k|^2` of one block-fading round.

  .. math::
    |h_k|^2 = L_k \left| \sqrt{\tfrac{\kappa}{\kappa+1}} + \sqrt{\tfrac{1}{\kappa+1}}\, z_k
              \right|^2, \qquad z_k = (x_k + i y_k)/\sqrt 2,\ x_k, y_k \sim N(0, 1).

  Both fadings use the same draw of ``(x, y)``, so for one key Rician with
  :math:`\kappa = 0` returns exactly the Rayleigh gains.

  Args:
    key: PRNG key of this round.
    path_gain: ``[K]`` large-scale gains :math:`L_k \ge 0` (linear, not dB).
    fading: ``"rayleigh"`` or ``"rician"``.
    rician_k: the Rician K-factor :math:`\kappa \ge 0` (a Python number, linear); must be
      0 for Rayleigh, so that a set K-factor is never silently ignored.

  Returns:
    ``[K]`` gains with :math:`E|h_k|^2 = L_k`; float like ``path_gain``.

  Raises:
    ConfigError: unknown ``fading``, negative ``rician_k``, or a K-factor with Rayleigh.
  """
  if fading not in FADING:
    raise ConfigError("fading", f"one of {FADING}", fading)
  check(float(rician_k) >= 0.0, "rician_k", "a K-factor >= 0", rician_k)
  check(fading == "rician" or float(rician_k) == 0.0, "rician_k",
        "0 with fading='rayleigh' (set fading='rician' for a line-of-sight path)", rician_k)
  path_gain = jnp.asarray(path_gain, dtype=float)
  kappa = float(rician_k)
  los = (kappa / (kappa + 1.0)) ** 0.5
  scatter = (1.0 / (kappa + 1.0)) ** 0.5
  xy = jax.random.normal(key, (2,) + path_gain.shape, path_gain.dtype)
  # The line-of-sight part is real (its phase is irrelevant to |h|^2).
  re = los + scatter * xy[0] / 2.0 ** 0.5
  im = scatter * xy[1] / 2.0 ** 0.5
  return path_gain * (re * re + im * im)


def noise_var_from_snr_db(snr_db, power=1.0):
  r"""Receiver noise variance for a transmit SNR: :math:`\sigma^2 = P / 10^{\mathrm{snr}/10}`.

  Examples:
    >>> noise_var_from_snr_db(10.0)
    0.1
  """
  return power / 10.0 ** (snr_db / 10.0)


def shannon_rate(gain_sq, power, noise_var, bandwidth_hz):
  r"""Shannon capacity in bits/s: :math:`B \log_2(1 + P |h|^2 / \sigma^2)`.

  Args:
    gain_sq: :math:`|h|^2` (any shape).
    power: transmit power :math:`P`.
    noise_var: receiver noise power :math:`\sigma^2` over the band.
    bandwidth_hz: :math:`B`.
  """
  snr = jnp.asarray(power, dtype=float) * jnp.asarray(gain_sq, dtype=float) / noise_var
  return bandwidth_hz * jnp.log2(1.0 + snr)


def digital_upload_time(num_params, bits_per_param, rate):
  r"""Seconds to send ``num_params`` entries quantised to ``bits_per_param`` bits at ``rate``.

  .. math::
    T_{dig} = \frac{n\, q}{R}

  A rate of 0 (a channel in a null) gives ``inf``; cap it if the simulation needs to.
  """
  return num_params * bits_per_param / jnp.asarray(rate, dtype=float)


def aircomp_upload_time(num_params, bandwidth_hz, values_per_use: float = 1.0):
  r"""Seconds for one AirComp group upload: :math:`T_{air} = n / (v B)`.

  ``v`` model entries per channel use (the module's convention: 1) and :math:`B` channel
  uses per second; all members transmit at once, so the time does not depend on the
  group size.
  """
  return num_params / (values_per_use * bandwidth_hz)


def group_upload_time(gain_sq, mask, num_params: int, uplink: str, comm: Comm) -> jax.Array:
  """Seconds a group's upload takes on this round's channel (``mask``: real members).

  AirComp: :func:`aircomp_upload_time`, whatever the group size. Digital: each member's
  :func:`digital_upload_time` at its Shannon rate, capped at ``comm.max_upload_time``;
  ``digital`` waits for the slowest member, ``tdma`` and ``ideal`` add the members' times.

  Examples:
    >>> import jax.numpy as jnp
    >>> comm = Comm(bandwidth_hz=100.0, bits_per_param=8.0, noise_var=1.0)
    >>> float(group_upload_time(jnp.ones(2), jnp.array([True, True]), 50, 'aircomp', comm))
    0.5
  """
  if uplink not in UPLINKS:
    raise ConfigError("uplink", f"one of {list(UPLINKS)}", uplink)
  if uplink == "aircomp":
    return jnp.float32(aircomp_upload_time(num_params, comm.bandwidth_hz, comm.values_per_use))
  rate = shannon_rate(gain_sq, comm.max_power, comm.noise_var, comm.bandwidth_hz)
  each = jnp.minimum(num_params * comm.bits_per_param / jnp.maximum(rate, 1e-30),
                     comm.max_upload_time)
  each = jnp.where(mask, each, 0.0)
  return jnp.max(each) if uplink == "digital" else jnp.sum(each)
