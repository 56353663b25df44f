"""Parameter masks in optax's convention: which leaves an option applies to.

A mask is a pytree of booleans with the structure of the parameters or a prefix of it (``True``
for a whole subtree), or a callable from the parameters to such a pytree, as in
``optax.masked``. ``None`` means every leaf. Flax NNX containers are looked through, in the
mask and in the parameters: ``nnx.Param`` variables around the leaves, and ``nnx.State``
against a plain dict with the same keys. So a mask built from ``nnx.state(model, nnx.Param)``
(``samx.models.normalization_mask``) works with the plain arrays that ``nnx.Optimizer`` hands
to the transform, and a dict (``nnx.to_pure_dict``) with a state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from samx.transforms._arguments import ArgumentError

PyTree = Any
Mask = PyTree | Callable[[PyTree], PyTree] | None


def _is_bool(leaf: Any) -> bool:
  return isinstance(leaf, bool | np.bool_)


def _plain(tree: PyTree) -> PyTree:
  """``tree`` with Flax NNX containers made plain: each ``nnx.Variable`` replaced by its value
  and each ``nnx.State`` by a dict (the key paths stay, but for ``.value``)."""
  from flax import nnx  # Flax is only needed by callers that use NNX modules.

  def is_nnx(node: Any) -> bool:
    return isinstance(node, nnx.Variable | nnx.State)

  def plain(node: Any) -> Any:
    if isinstance(node, nnx.Variable):
      return _plain(node.get_value())
    if isinstance(node, nnx.State):
      return {key: _plain(value) for key, value in node.items()}
    return node

  return jax.tree.map(plain, tree, is_leaf=is_nnx)


def _path_key(path: tuple[Any, ...]) -> tuple[Any, ...]:
  """A leaf's key path without ``nnx.Variable``'s ``.value`` step, dict and State keys alike."""
  return tuple(getattr(key, "key", getattr(key, "idx", key)) for key in path
               if not (isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value"))


def check_mask(name: str, mask: Mask, *, transform: str) -> None:
  """Raises an :class:`ArgumentError` for ``name`` unless ``mask`` is ``None``, a callable, or a
  pytree whose leaves are all Python (or NumPy) booleans."""
  if mask is None or callable(mask):
    return
  leaves = jax.tree.leaves(mask)
  bad = [leaf for leaf in leaves if not _is_bool(leaf)]
  if bad or not leaves:
    found = f"a leaf {bad[0]!r}" if bad else "no leaves"
    raise ArgumentError(
        name,
        f"{transform}: `{name}` must be a pytree of booleans shaped like the parameters (or a "
        f"prefix of them), or a callable from the parameters to one, as in optax.masked; got "
        f"{found}.")


def mask_leaves(name: str, mask: Mask, params: PyTree, *, transform: str) -> list[bool] | None:
  """The mask as one boolean per leaf of ``params`` (in ``jax.tree.leaves`` order), or ``None``
  for every leaf.

  Raises:
    ArgumentError: naming ``name`` if the mask (or what the callable returns) does not match the
      parameters' structure or has a leaf that is not a boolean.
  """
  if mask is None:
    return None
  tree = _plain(mask(params) if callable(mask) else mask)
  check_mask(name, tree, transform=transform)
  plain_params = _plain(params)
  try:
    full = jax.tree.map(lambda value, subtree: jax.tree.map(lambda _: value, subtree),
                        tree, plain_params)
  except (ValueError, TypeError) as error:
    raise ArgumentError(
        name,
        f"{transform}: `{name}` must have the structure of the parameters (or a prefix of it); "
        f"{error}") from error
  flags = jax.tree_util.tree_leaves_with_path(full)
  paths = [_path_key(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  by_path = {_path_key(path): bool(leaf) for path, leaf in flags}
  if len(by_path) == len(paths) and all(path in by_path for path in paths):
    return [by_path[path] for path in paths]  # matched by key: NNX and dict orders may differ
  return [bool(leaf) for _, leaf in flags]


def select(tree: PyTree, selected: list[bool] | None) -> list[jax.Array]:
  """The leaves of ``tree`` that ``selected`` marks (all of them if ``None``)."""
  leaves = jax.tree.leaves(tree)
  if selected is None:
    return leaves
  return [leaf for leaf, keep in zip(leaves, selected, strict=True) if keep]


def fill(like: PyTree, selected: list[bool] | None, values: list[jax.Array]) -> PyTree:
  """A tree shaped like ``like`` with ``values`` at the selected leaves and zeros elsewhere."""
  leaves, treedef = jax.tree.flatten(like)
  if selected is None:
    return jax.tree.unflatten(treedef, values)
  remaining = iter(values)
  merged = [next(remaining) if keep else jnp.zeros_like(leaf)
            for leaf, keep in zip(leaves, selected, strict=True)]
  return jax.tree.unflatten(treedef, merged)
