"""The client axis: per-client code written once, mapped over K clients.

A federated round is a function of one client (local training, then a collective
over the named client axis). :class:`ClientAxis` maps it over K clients either

* with ``jax.vmap(fn, axis_name='clients')`` on one device, or
* with ``jax.shard_map`` over a 1-D mesh of D devices: each device holds K/D clients
  and vmaps over them inside. The client axis is then two named axes, the mesh axis
  ``'devices'`` and the inner vmap axis ``'clients'``; a collective over
  :attr:`ClientAxis.axis_name` (a tuple of both) reduces over all K clients.

Aggregators therefore take the axis name from the runtime
(``weighted_mean(axis.axis_name)``) rather than hard-coding ``'clients'``. They reduce
with :func:`client_sum`, :func:`client_gather` and :func:`client_weighted_sum`, which
also work in a user's own ``jax.shard_map`` with either ``check_vma`` setting.

The ``check_vma`` rule (JAX 0.10, ``jax.shard_map``'s default is ``check_vma=True``):

* **Name every axis the clients are spread over**, mesh axes first: ``('devices',
  'clients')`` for a mesh axis with a vmap inside each device, ``'devices'`` for one
  client per device. A name left out is a silent partial reduction.
* **Types.** With ``check_vma=True`` every value inside ``shard_map`` carries the set of
  mesh axes it varies over (``jax.typeof(x).mat.varying``). A ``psum`` over a mesh axis, or an
  ``all_gather(..., to='invarying')``, returns a value the same on every device, as
  ``out_specs=P()`` requires; a plain ``all_gather`` is typed as still varying. vmap axes
  are not part of that type, and in JAX 0.10.2 *every* collective over a vmap axis
  inside a ``check_vma=True`` shard_map fails (``psum`` with an AssertionError or a
  ValueError about varying and invarying axes, ``all_gather`` with a bare AssertionError):
  JAX's automatic cast to varying is applied to the vmap name, which is no mesh axis.
  So the helpers here reduce a vmap axis by an ``all_gather`` under
  ``jax.auto_pcast(False)`` (nothing needs casting: the vmap axis has no type) and a
  local sum, and use ``psum`` / ``all_gather(..., to='invarying')`` only over mesh axes.
* **Gradients.** With ``check_vma=True``, ``jax.grad`` inside ``shard_map`` with respect
  to a parameter that entered replicated (``in_specs=P()``) returns the gradient *summed
  over devices* (the implicit cast of the parameter to varying transposes to a
  ``psum``): every client would silently train on the other devices' gradients. Cast
  per-client parameters first, ``w = jax.lax.pcast(w, 'devices', to='varying')``, or run
  the ``shard_map`` with ``check_vma=False``. :meth:`ClientAxis.map` does the latter:
  per-device code then has the classic semantics (gradients stay per client), and the
  collectives are explicit.
* ``jax.make_mesh`` builds Explicit axis types that reject unsharded inputs; we build
  ``jax.sharding.Mesh`` directly.
"""

from __future__ import annotations

import dataclasses
import math
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
  """``(innermost name, outer names)`` of a client axis name; ConfigError if malformed."""
  names = _names(axis_name)
  return names[-1], names[:-1]


def _names(axis_name: AxisName) -> tuple[str, ...]:
  names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
  if not (names and all(isinstance(n, str) for n in names)):
    raise ConfigError("axis_name", "a client axis name or a tuple of names (outer mesh "
                      "axes..., inner vmap axis)", axis_name)
  return names


def _is_mesh_axis(name: str) -> bool:
  """A manual axis of the enclosing ``shard_map``; any other bound name is a vmap axis."""
  return name in jax.sharding.get_abstract_mesh().manual_axes


def _vmap_gather(x: Any, name: str, tiled: bool = False) -> Any:
  # Without the automatic cast: in JAX 0.10.2 it would try to cast to varying over the
  # vmap name inside a check_vma=True shard_map and fail (module docstring).
  with jax.auto_pcast(False):
    return jax.lax.all_gather(x, name, tiled=tiled)


def _mesh_psum(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
  if not names:
    return x
  # One psum over several mesh axes needs x varying over all of them (check_vma=True);
  # a value the same on every device is summed as one copy per device, as it should be.
  missing = tuple(n for n in names if n not in jax.typeof(x).mat.varying)
  if missing:
    x = jax.lax.pcast(x, missing, to="varying")
  return jax.lax.psum(x, names)


def client_sum(tree: Any, axis_name: AxisName) -> Any:
  """``sum_k tree_k`` over every client of ``axis_name``, the same on every client.

  Each name may be a vmap axis or a mesh axis of the enclosing ``shard_map``, with
  either ``check_vma`` (module docstring): vmap axes are gathered and summed locally,
  mesh axes reduced with one ``psum``.
  """
  names = _names(axis_name)
  mesh = tuple(n for n in names if _is_mesh_axis(n))

  def leaf(x):
    for name in names:
      if name not in mesh:
        x = jnp.sum(_vmap_gather(x, name), axis=0)
    return _mesh_psum(jnp.asarray(x), mesh)

  return jax.tree.map(leaf, tree)


def client_gather(tree: Any, axis_name: AxisName) -> Any:
  """Every client's leaves stacked ``[K, ...]`` in global client order (outer names major:
  device-major under shard_map), the same on every client, with either ``check_vma``."""
  names = _names(axis_name)

  def leaf(x):
    for i, name in enumerate(reversed(names)):  # innermost first, then tile outward
      if _is_mesh_axis(name):
        x = jax.lax.all_gather(x, name, tiled=i > 0, to="invarying")
      else:
        x = _vmap_gather(x, name, tiled=i > 0)
    return x

  return jax.tree.map(leaf, tree)


def client_index(axis_name: AxisName) -> jax.Array:
  """This client's row in :func:`client_gather`'s ``[K, ...]`` (int32 scalar)."""
  index = jnp.zeros([], jnp.int32)
  for name in _names(axis_name):
    index = index * jax.lax.axis_size(name) + jax.lax.axis_index(name)
  return index


def client_count(axis_name: AxisName) -> int:
  """K, the number of clients over every name of ``axis_name`` (a Python int)."""
  return math.prod(jax.lax.axis_size(name) for name in _names(axis_name))


def client_weighted_sum(tree: Any, weight: jax.Array, axis_name: AxisName) -> Any:
  """``sum_k weight_k * tree_k`` over the client axis, the same on every client.

  When the innermost name of ``axis_name`` is a vmap axis (as in
  :attr:`ClientAxis.axis_name`) the per-client values already sit stacked, so gathering
  them costs nothing and the reduction is one ``tensordot`` (a matmul) per leaf: on CPU
  this is several times faster than the multiply-then-sum that a ``psum`` of weighted
  values lowers to; outer names are then reduced by :func:`client_sum`. When it is a
  mesh axis (one client per device) the weighted values are summed by ``psum``.
  """
  inner, outer = split_axis_name(axis_name)
  weight = jnp.asarray(weight)
  if _is_mesh_axis(inner):
    return client_sum(jax.tree.map(lambda x: weight.astype(x.dtype) * x, tree), axis_name)
  weights = _vmap_gather(weight, inner)

  def reduce(x):
    return jnp.tensordot(weights.astype(x.dtype), _vmap_gather(x, inner), axes=1)

  out = jax.tree.map(reduce, tree)
  return client_sum(out, outer) if outer else out


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
