"""The client axis: per-client code written once, mapped over K clients.

A federated round is a function of one client (local training, then a collective
over the named client axis). :class:`ClientAxis` maps it over K clients either

* with ``jax.vmap(fn, axis_name='clients')`` on one device, or
* with ``jax.shard_map`` over a 1-D mesh of D devices: each device holds K/D clients
  and vmaps over them inside. The client axis is then two named axes, the mesh axis
  ``'devices'`` and the inner vmap axis ``'clients'``; a collective over
  :attr:`ClientAxis.axis_name` (a tuple of both) reduces over all K clients.

Aggregators therefore take the axis name from the runtime
(``weighted_mean(axis.axis_name)``) rather than hard-coding ``'clients'``.

Two JAX traps shape this module (see ENV_NOTES.md):

* ``shard_map`` with ``check_vma=True`` makes ``jax.grad`` of a replicated parameter
  return the gradient summed over devices; and in JAX 0.10.2 a ``psum`` naming both a
  vmap axis and a mesh axis trips an assertion in the varying-axes checker. We run
  ``shard_map`` with ``check_vma=False``: per-device code then has the classic
  semantics (gradients stay per client), and collectives are explicit.
* ``jax.make_mesh`` builds Explicit axis types that reject unsharded inputs; we build
  ``jax.sharding.Mesh`` directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxfl.errors import ConfigError

CLIENTS = "clients"
DEVICES = "devices"

AxisName = str | tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ClientAxis:
  """How per-client code is mapped over clients.

  Attributes:
    mesh: ``None`` to vmap over all clients on the default device; otherwise a 1-D
      mesh whose single axis is named ``'devices'`` (see :func:`client_mesh`).
  """

  mesh: Mesh | None = None

  @property
  def num_devices(self) -> int:
    return 1 if self.mesh is None else self.mesh.size

  @property
  def axis_name(self) -> AxisName:
    """The name(s) a collective must reduce over to cover every client."""
    return CLIENTS if self.mesh is None else (DEVICES, CLIENTS)

  def check_num_clients(self, num_clients: int, field: str = "clients_per_round") -> None:
    if num_clients <= 0 or num_clients % self.num_devices:
      raise ConfigError(field, f"a positive multiple of the {self.num_devices} devices",
                        num_clients)

  def map(self, fn: Callable, in_axes: Sequence[Any], out_axes: Any) -> Callable:
    """Map ``fn`` (one client) over the leading client axis of its inputs.

    Args:
      fn: per-client function; may use collectives over :attr:`axis_name`.
      in_axes: one entry per positional argument, ``0`` (mapped over clients) or
        ``None`` (shared by all clients); pytree prefixes allowed as in ``vmap``.
      out_axes: ``0`` for per-client outputs, ``None`` for outputs that are the same
        on every client (results of collectives).

    Returns:
      A function of the stacked arguments; not jitted (jit the round around it).
    """
    in_axes = tuple(in_axes)
    vmapped = jax.vmap(fn, in_axes=in_axes, out_axes=out_axes, axis_name=CLIENTS)
    if self.mesh is None:
      return vmapped
    return jax.shard_map(
        vmapped,
        mesh=self.mesh,
        in_specs=_specs(in_axes),
        out_specs=_specs(out_axes),
        check_vma=False,
    )


def split_axis_name(axis_name: AxisName) -> tuple[str, tuple[str, ...]]:
  """``(inner vmap axis, outer mesh axes)`` of a client axis name; ConfigError if malformed."""
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  if not (names and all(isinstance(n, str) for n in names)):
    raise ConfigError("axis_name", "a client axis name or a tuple of names (outer mesh "
                      "axes..., inner vmap axis)", axis_name)
  return names[-1], names[:-1]


def client_weighted_sum(tree: Any, weight: jax.Array, axis_name: AxisName) -> Any:
  """``sum_k weight_k * tree_k`` over the client axis, the same on every client.

  The innermost name of ``axis_name`` must be the vmap axis (as in
  :attr:`ClientAxis.axis_name`); outer names (a device mesh) are reduced with ``psum``.
  Under vmap the per-client values already sit stacked, so ``all_gather`` costs nothing
  and the reduction is one ``tensordot`` (a matmul) per leaf: on CPU this is several
  times faster than the multiply-then-sum that a ``psum`` of weighted values lowers to.
  """
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  inner, outer = names[-1], names[:-1]
  weights = jax.lax.all_gather(weight, inner)

  def reduce(x):
    return jnp.tensordot(weights.astype(x.dtype), jax.lax.all_gather(x, inner), axes=1)

  out = jax.tree.map(reduce, tree)
  return jax.lax.psum(out, outer) if outer else out


def _specs(axes: Any) -> Any:
  def spec(a):
    if a is None:
      return P()
    if a == 0:
      return P(DEVICES)
    raise ValueError(f"client axis must be 0 or None, got {a!r}")

  return jax.tree.map(spec, axes, is_leaf=lambda a: a is None)


def client_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``'devices'`` mesh over the first ``num_devices`` local devices (default all)."""
  n = resolve_num_devices(0 if num_devices is None else num_devices)
  return Mesh(np.array(jax.devices()[:n]), (DEVICES,))


def resolve_num_devices(num_devices: int) -> int:
  """``0`` means every local device; other values are checked against the local count."""
  available = jax.device_count()
  if num_devices == 0:
    return available
  if not (isinstance(num_devices, int) and 1 <= num_devices <= available):
    raise ConfigError("num_devices", f"0 (all) or between 1 and {available} (local devices)",
                      num_devices)
  return num_devices


def make_client_axis(num_devices: int) -> ClientAxis:
  """One device (``1``) gives the vmap runtime, more the shard_map one; ``0`` = all devices."""
  n = resolve_num_devices(num_devices)
  return ClientAxis() if n == 1 else ClientAxis(client_mesh(n))
