"""The input pipeline: seeded shuffled batches of in-memory arrays, sharded over a device mesh,
and augmentation that runs on the device inside the jitted step.

The host only gathers rows of numpy arrays and hands them to ``jax.device_put`` (or, with
several processes, ``jax.make_array_from_process_local_data``); every per-image operation
(crop, flip, normalisation) is a batched ``jax.random`` computation on the device.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The order of the examples in ``epoch``: a permutation fixed by ``(seed, epoch)``."""
  if not shuffle:
    return np.arange(num_examples)
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    mesh: Mesh | None = None,
    batch_axis: str | Sequence[str] = "data",
    process_index: int | None = None,
    process_count: int | None = None,
    start: int = 0,
) -> Iterator[dict[str, jax.Array]]:
  """Yields the full batches of one epoch as dicts of arrays sharded along the batch axis.

  Every process computes the same permutation from ``(seed, epoch)``; of each global batch of
  ``batch_size`` rows it loads only its own contiguous ``batch_size / process_count`` rows, and
  the global array is assembled with ``jax.make_array_from_process_local_data``. Without a mesh
  the batch is put on the default device. The last partial batch is dropped, so every step
  has the same shape (no recompilation).

  Args:
    arrays: named arrays with the examples along axis 0 (e.g. ``{"image": ..., "label": ...}``).
    batch_size: the global batch size; must divide by the process count, and by the number of
      devices along ``batch_axis``.
    seed: shuffling seed.
    epoch: the epoch number (a different permutation each epoch).
    shuffle: shuffle, or keep the stored order.
    mesh: the device mesh; the batch is sharded over ``batch_axis`` and replicated elsewhere.
    batch_axis: the mesh axis (or axes) of the batch.
    process_index: this process (default ``jax.process_index()``).
    process_count: the number of processes (default ``jax.process_count()``).
    start: skip the epoch's first ``start`` batches (a run resumed mid-epoch); the batches
      after them are those of the whole epoch.
  """
  sizes = {name: len(array) for name, array in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays must share their first dimension; got {sizes}.")
  num_examples = next(iter(sizes.values()))
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not isinstance(batch_size, int) or batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size must be a positive integer divisible by the process count "
                     f"({process_count}); got {batch_size!r}.")
  if batch_size > num_examples:
    raise ValueError(f"batch_size {batch_size} is larger than the dataset ({num_examples}).")
  sharding = None
  if mesh is not None:
    axes = (batch_axis,) if isinstance(batch_axis, str) else tuple(batch_axis)
    shards = int(np.prod([mesh.shape[axis] for axis in axes]))
    if batch_size % shards:
      raise ValueError(f"batch_size {batch_size} must divide by the {shards} devices along "
                       f"{axes}.")
    sharding = NamedSharding(mesh, PartitionSpec(axes))
  if isinstance(start, bool) or not isinstance(start, int) or start < 0:
    raise ValueError(f"start must be an integer >= 0; got {start!r}.")
  local = batch_size // process_count
  order = epoch_order(num_examples, seed=seed, epoch=epoch, shuffle=shuffle)
  for first in range(start * batch_size, num_examples - batch_size + 1, batch_size):
    rows = np.sort(order[first + process_index * local:first + (process_index + 1) * local])
    local_batch = {name: array[rows] for name, array in arrays.items()}
    if sharding is None:
      yield {name: jnp.asarray(value) for name, value in local_batch.items()}
    else:
      yield {name: jax.make_array_from_process_local_data(
          sharding, value, (batch_size, *value.shape[1:])) for name, value in local_batch.items()}


T = TypeVar("T")


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
  """The items of ``items``, made ``size`` ahead of the one being used (double buffering).

  With :func:`batches`, the next ``size`` batches are gathered on the host and their copies to
  the devices started (``jax.device_put`` returns before the copy is done) while the current
  training step runs, so host work and transfers overlap the compute. ``size=0`` makes nothing
  ahead.

  Example:
    >>> list(prefetch(range(5), size=2))
    [0, 1, 2, 3, 4]
  """
  if isinstance(size, bool) or not isinstance(size, int) or size < 0:
    raise ValueError(f"prefetch: size must be an integer >= 0; got {size!r}.")
  ahead: collections.deque[T] = collections.deque()
  for item in items:
    ahead.append(item)
    if len(ahead) > size:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()


def normalize(images: jax.Array, mean: Sequence[float] | np.ndarray,
              std: Sequence[float] | np.ndarray) -> jax.Array:
  """uint8 images to float32 ``(x / 255 - mean) / std`` per channel."""
  scaled = images.astype(jnp.float32) / 255.0
  return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each image by ``padding`` pixels and takes a random crop of the original size."""
  if padding == 0:
    return images
  batch, height, width, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, image.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def augment(
    key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True,
    mean: Sequence[float] | np.ndarray = CIFAR10_MEAN,
    std: Sequence[float] | np.ndarray = CIFAR10_STD,
) -> jax.Array:
  """The standard CIFAR augmentation on device: random crop with padding, flip, normalisation.

  Takes a uint8 NHWC batch and returns float32; call it inside the jitted training step with a
  per-step key (e.g. ``jax.random.fold_in(key, step)``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from samx.data.pipeline import augment
    >>> out = augment(jax.random.key(0), jnp.zeros((2, 32, 32, 3), jnp.uint8))
    >>> out.shape, out.dtype
    ((2, 32, 32, 3), dtype('float32'))
  """
  crop_key, flip_key = jax.random.split(key)
  images = random_crop(crop_key, images, crop_padding)
  if flip:
    images = random_flip(flip_key, images)
  return normalize(images, mean, std)

