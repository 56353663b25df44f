"""The device mesh of a run and where each array of the training state lives on it.

The mesh has two axes, ``data`` and ``fsdp`` (``sharding.fsdp`` devices along ``fsdp``, the
rest along ``data``); the batch is split over both. With ``fsdp = 1`` every array of the state
is replicated: data-parallel training. With ``fsdp = N > 1`` (fully sharded data parallel, as
big_vision's and MaxText's ``fsdp`` axis) each array of the state (the parameters, the
optimizer's state, the model's other variables) with at least ``sharding.min_elements``
elements is split ``N`` ways along its largest dimension that ``N`` divides (the last such
dimension on a tie); smaller arrays, and those with no such dimension, are replicated. The same
rule for a parameter and for its optimizer moments (same shape) puts them on the same devices.
XLA gathers each weight where the step needs it whole and reduce-scatters its gradient, so each
device holds about ``1/N`` of the state; the metrics are data-parallel training's, to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# The batch is split over every axis of the mesh.
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)


def make_mesh(devices: Sequence[Any], fsdp: int) -> Mesh:
  """``devices`` as a ``(len(devices) // fsdp) x fsdp`` mesh with axes ``("data", "fsdp")``.

  ``jax.make_mesh`` orders the devices for the machine's topology (on a TPU slice, neighbours
  along ``fsdp``, which carries the most traffic).
  """
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"sharding.fsdp must be a positive divisor of the {len(devices)} devices; "
                     f"got {fsdp}.")
  return jax.make_mesh((len(devices) // fsdp, fsdp), BATCH_AXES,
                       axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def fsdp_spec(shape: Sequence[int], fsdp: int, min_elements: int) -> PartitionSpec:
  """The rule: split along the largest dimension that ``fsdp`` divides (the last on a tie),
  if the array has at least ``min_elements`` elements; else replicate (``PartitionSpec()``)."""
  if fsdp == 1 or math.prod(shape) < min_elements:
    return PartitionSpec()
  divisible = [dim for dim, size in enumerate(shape) if size % fsdp == 0]
  if not divisible:
    return PartitionSpec()
  dim = max(divisible, key=lambda d: (shape[d], d))
  return PartitionSpec(*([None] * dim), FSDP_AXIS)


def state_shardings(abstract_state: Any, mesh: Mesh, min_elements: int) -> Any:
  """A ``NamedSharding`` for each leaf of ``abstract_state`` (arrays or ``ShapeDtypeStruct``s)
  by :func:`fsdp_spec` over the mesh's ``fsdp`` axis."""
  fsdp = mesh.shape[FSDP_AXIS]
  return jax.tree.map(
      lambda leaf: NamedSharding(mesh, fsdp_spec(leaf.shape, fsdp, min_elements)),
      abstract_state)


def bytes_per_device(state: Any) -> int:
  """The bytes of ``state`` (sharded arrays) that one device holds: its shard of each leaf."""
  total = 0
  for leaf in jax.tree.leaves(state):
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shard) * leaf.dtype.itemsize
  return total


def describe(mesh: Mesh) -> str:
  """``"8 device(s)"``, or with FSDP ``"8 device(s) (data 2 x fsdp 4)"``."""
  text = f"{mesh.size} device(s)"
  if mesh.shape[FSDP_AXIS] > 1:
    text += f" (data {mesh.shape[DATA_AXIS]} x fsdp {mesh.shape[FSDP_AXIS]})"
  return text
