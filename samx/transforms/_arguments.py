"""The checks a SAM-family transform runs on its arguments when it is built."""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer


class ArgumentError(ValueError):
  """A transform was built with a bad argument.

  A ``ValueError``, so ``except ValueError`` still catches it; ``argument`` says which argument
  was rejected, so that a caller (a training engine) can point at its own name for it.

  Attributes:
    argument: the name of the rejected argument in the transform's signature, e.g. ``"rho"``.

  Example:
    >>> import samx
    >>> try:
    ...   samx.sam(rho=-1.0)
    ... except samx.transforms.ArgumentError as error:
    ...   print(error.argument)
    rho
  """

  def __init__(self, argument: str, message: str) -> None:
    super().__init__(message)
    self.argument = argument

  def __reduce__(self) -> tuple[type[ArgumentError], tuple[str, str]]:
    return type(self), (self.argument, str(self))


def is_traced(value: Any) -> bool:
  """Whether ``value`` is a traced array (under ``jax.jit``), whose value is not known yet.

  ``optax.inject_hyperparams`` hands a transform its numbers as arrays from its state, traced
  under ``jit``: they are checked where they are concrete (when the transform is built outside
  ``jit``, and by ``optax.inject_hyperparams``'s own ``init``) and nowhere else.
  """
  return isinstance(value, Tracer)


def check_number(
    name: str, value: Any, *, minimum: float = 0.0, allow_schedule: bool = True,
    transform: str = "samx",
) -> None:
  """Raises an :class:`ArgumentError` for ``name`` unless ``value`` is a finite number.

  The number must be >= ``minimum``; a callable (an optax schedule of the step count) is
  accepted instead when ``allow_schedule``. A traced scalar (:func:`is_traced`) is accepted as
  it is: its value is checked where it is concrete.
  """
  if allow_schedule and callable(value):
    return
  accepted = f"a finite number >= {minimum}" + (
      " or an optax schedule (a callable of the step count)" if allow_schedule else "")
  if is_traced(value):
    if jnp.ndim(value) != 0 or not jnp.issubdtype(value.dtype, jnp.number):
      raise ArgumentError(name, f"{transform}: `{name}` must be {accepted}; got a traced array "
                                f"of shape {jnp.shape(value)} and dtype {value.dtype}.")
    return
  is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if not is_number and isinstance(value, jax.Array | jnp.ndarray) and jnp.ndim(value) == 0:
    is_number, value = True, float(value)
  if not is_number or not math.isfinite(value) or value < minimum:
    raise ArgumentError(name, f"{transform}: `{name}` must be {accepted}; got {value!r}.")


def check_count(name: str, value: Any, *, minimum: int, allow_none: bool,
                transform: str = "samx") -> None:
  """Raises an :class:`ArgumentError` for ``name`` unless ``value`` is an int >= ``minimum``.

  ``None`` is accepted when ``allow_none``.
  """
  if value is None and allow_none:
    return
  if isinstance(value, jax.Array | np.ndarray):
    factory = transform if transform.startswith("samx.") else "samx.sam"
    raise ArgumentError(
        name, f"{transform}: `{name}` is an integer that fixes the computation itself (shapes, "
        f"periods, counts), so it must be a Python int, not an array; got {value!r}. With "
        f"optax.inject_hyperparams, which passes numbers as arrays, make it static: "
        f"optax.inject_hyperparams({factory}, static_args=(\"{name}\",)).")
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    accepted = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    raise ArgumentError(name, f"{transform}: `{name}` must be {accepted}; got {value!r}.")


def check_flag(name: str, value: Any, *, transform: str = "samx") -> None:
  """Raises an :class:`ArgumentError` for ``name`` unless ``value`` is ``True`` or ``False``."""
  if not isinstance(value, bool):
    raise ArgumentError(name, f"{transform}: `{name}` must be True or False; got {value!r}.")
