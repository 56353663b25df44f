"""What every SAM-family transform shares: argument checks, schedules, and the gradient step."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from samx.transforms._objective import Objective
from samx.transforms._perturbation import Perturbation, asam_perturbation, sam_perturbation
from samx.transforms._perturbed_gradient import (
    PerturbedLoss,
    clean_and_perturbed_gradients,
    loss_at_perturbation,
)

PyTree = Any
ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


def check_number(
    name: str, value: Any, *, minimum: float = 0.0, allow_schedule: bool = True,
    transform: str = "samx",
) -> None:
  """Raises a ValueError naming ``name`` unless ``value`` is a finite number >= ``minimum``.

  A callable (an optax schedule of the step count) is accepted when ``allow_schedule``.
  """
  if allow_schedule and callable(value):
    return
  accepted = f"a finite number >= {minimum}" + (
      " or an optax schedule (a callable of the step count)" if allow_schedule else "")
  is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if not is_number and isinstance(value, jax.Array | jnp.ndarray) and jnp.ndim(value) == 0:
    is_number, value = True, float(value)
  if not is_number or not math.isfinite(value) or value < minimum:
    raise ValueError(f"{transform}: `{name}` must be {accepted}; got {value!r}.")


def check_count(name: str, value: Any, *, minimum: int, allow_none: bool,
                transform: str = "samx") -> None:
  """Raises a ValueError naming ``name`` unless ``value`` is an int >= ``minimum`` (or None)."""
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    accepted = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    raise ValueError(f"{transform}: `{name}` must be {accepted}; got {value!r}.")


def value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """A number (kept weakly typed, so it takes the parameters' precision), or a schedule
  evaluated at ``count``."""
  return jnp.asarray(value(count)) if callable(value) else value


def next_count(count: jax.Array) -> jax.Array:
  """``count + 1``, saturating instead of overflowing int32."""
  return optax.safe_increment(count)


@dataclasses.dataclass(frozen=True)
class SharpnessAwareGradient:
  """The shared first half of every SAM-family step: ``(g, g_sam)`` from ``(grads, objective)``.

  Built by :func:`sharpness_aware_gradient`, which checks the arguments once, when the
  transform is made.
  """

  transform: str
  rho: ScalarOrSchedule
  perturbation: Perturbation
  perturbed_loss: PerturbedLoss
  group_size: int | None
  groups_in_parallel: int | None
  groups_unroll: int | bool
  axis_name: Hashable | None

  def __call__(
      self, grads: PyTree, params: PyTree | None, objective: Objective | None, count: jax.Array
  ) -> tuple[PyTree, PyTree]:
    if objective is None:
      raise ValueError(
          f"{self.transform} needs the objective: call "
          "`tx.update(grads, state, params, objective=samx.Objective(apply_fn, loss_fn, inputs, "
          "targets))`.")
    if not isinstance(objective, Objective):
      raise ValueError(
          f"{self.transform}: `objective` must be a samx.Objective; got "
          f"{type(objective).__name__}.")
    if params is None:
      raise ValueError(
          f"{self.transform} needs the current parameters: call "
          "`tx.update(grads, state, params, objective=...)`.")
    return clean_and_perturbed_gradients(
        objective, params, grads, value_at(self.rho, count),
        perturbation=self.perturbation, perturbed_loss=self.perturbed_loss,
        group_size=self.group_size, groups_in_parallel=self.groups_in_parallel,
        groups_unroll=self.groups_unroll, axis_name=self.axis_name)


def sharpness_aware_gradient(
    transform: str,
    rho: ScalarOrSchedule,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    group_size: int | None = None,
    groups_in_parallel: int | None = None,
    groups_unroll: int | bool = True,
    axis_name: Hashable | None = None,
    perturbed_loss: PerturbedLoss = loss_at_perturbation,
) -> SharpnessAwareGradient:
  """Checks the options every SAM-family transform shares and bundles them."""
  check_number("rho", rho, transform=transform)
  check_number("eta", eta, allow_schedule=False, transform=transform)
  if not isinstance(adaptive, bool):
    raise ValueError(f"{transform}: `adaptive` must be True or False; got {adaptive!r}.")
  check_count("group_size", group_size, minimum=1, allow_none=True, transform=transform)
  check_count("groups_in_parallel", groups_in_parallel, minimum=1, allow_none=True,
              transform=transform)
  if not isinstance(groups_unroll, bool):
    check_count("groups_unroll", groups_unroll, minimum=1, allow_none=False, transform=transform)
  if groups_in_parallel is not None and group_size is None:
    raise ValueError(f"{transform}: `groups_in_parallel` needs `group_size` to be set.")
  if axis_name is not None and not isinstance(axis_name, Hashable):
    raise ValueError(
        f"{transform}: `axis_name` must be a mesh or pmap axis name; got {axis_name!r}.")
  return SharpnessAwareGradient(
      transform=transform,
      rho=rho,
      perturbation=asam_perturbation(eta) if adaptive else sam_perturbation,
      perturbed_loss=perturbed_loss,
      group_size=group_size,
      groups_in_parallel=groups_in_parallel,
      groups_unroll=groups_unroll,
      axis_name=axis_name,
  )
