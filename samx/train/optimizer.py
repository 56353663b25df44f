"""The run's optax chain and learning-rate schedule, built once from the configuration."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax

from samx.train.config import Config, OptimizerConfig, ScheduleConfig, method_section
from samx.train.methods import Steps, build_transform, mask_options


def learning_rate_schedule(optimizer: OptimizerConfig, schedule: ScheduleConfig,
                           total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate at each step.

  ``constant``; ``cosine`` from the peak to zero at ``total_steps``; ``step``: the peak times
  ``decay ** k`` after the ``k``-th boundary (boundaries are fractions of ``total_steps``, so
  the SANER paper's decays at epochs 100 and 150 of 200 are ``(0.5, 0.75)``). A linear warmup of
  ``schedule.warmup_epochs`` from zero comes first.

  Example:
    >>> from samx.train.config import OptimizerConfig, ScheduleConfig
    >>> lr = learning_rate_schedule(OptimizerConfig(learning_rate=0.1),
    ...                             ScheduleConfig(kind="step", boundaries=(0.5,)), 100, 10)
    >>> [round(float(lr(s)), 4) for s in (0, 49, 50, 99)]
    [0.1, 0.1, 0.01, 0.01]
  """
  peak = optimizer.learning_rate
  warmup = min(round(schedule.warmup_epochs * steps_per_epoch), total_steps)
  remaining = max(total_steps - warmup, 1)
  if schedule.kind == "constant":
    main = optax.constant_schedule(peak)
  elif schedule.kind == "cosine":
    main = optax.cosine_decay_schedule(peak, remaining)
  else:
    boundaries = {round(b * total_steps) - warmup: schedule.decay
                  for b in schedule.boundaries}
    main = optax.piecewise_constant_schedule(peak, {k: v for k, v in boundaries.items() if k > 0})
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def radius_schedule(optimizer: OptimizerConfig, learning_rate: optax.Schedule,
                    total_steps: int) -> float | optax.Schedule:
  """``optimizer.rho``, or with ``optimizer.rho_min`` a schedule that follows the learning
  rate: ``rho_min + (rho - rho_min) (lr_t - lr_min) / (lr_max - lr_min)``, with ``lr_min`` and
  ``lr_max`` the smallest and largest learning rates of the run's ``total_steps`` (GSAM's
  schedule, Zhuang et al. 2022; a constant learning rate gives ``rho``).

  Example:
    >>> from samx.train.config import OptimizerConfig, ScheduleConfig
    >>> o = OptimizerConfig(rho=0.1, rho_min=0.02, learning_rate=1.0)
    >>> lr = learning_rate_schedule(o, ScheduleConfig(kind="cosine", warmup_epochs=1), 100, 10)
    >>> rho = radius_schedule(o, lr, 100)
    >>> [round(float(rho(step)), 4) for step in (0, 5, 10, 55, 100)]
    [0.02, 0.06, 0.1, 0.06, 0.02]
  """
  if optimizer.rho_min is None:
    return optimizer.rho
  rates = learning_rate(jnp.arange(max(total_steps, 1)))
  lowest, highest = float(jnp.min(rates)), float(jnp.max(rates))
  if highest <= lowest:
    return optimizer.rho
  rho, rho_min = optimizer.rho, optimizer.rho_min

  def radius(step: jax.typing.ArrayLike) -> jax.Array:
    rate = jnp.asarray(learning_rate(step))
    return rho_min + (rho - rho_min) * (rate - lowest) / (highest - lowest)

  return radius


def all_finite(tree: Any) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite (a boolean scalar)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def skip_nonfinite_updates(inner: optax.GradientTransformation, max_consecutive: int
                           ) -> optax.GradientTransformationExtraArgs:
  """``inner``, but a step whose *final* update is not finite is skipped: the update is zero and
  ``inner``'s state stays as it was, up to ``max_consecutive`` steps in a row (then the update
  is applied, and the run's finiteness check stops it).

  Unlike ``optax.apply_if_finite``, which looks at the incoming gradient, this looks at what
  ``inner`` makes of it, so it also catches a finite gradient that the samx transform at the
  head of the chain turns non-finite (a perturbed pass that overflows). Its state is an
  ``optax.ApplyIfFiniteState``.
  """
  inner = optax.with_extra_args_support(inner)

  def init(params: Any) -> optax.ApplyIfFiniteState:
    return optax.ApplyIfFiniteState(
        notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True),
        total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update(updates: Any, state: optax.ApplyIfFiniteState, params: Any = None,
             **extra_args: Any) -> tuple[Any, optax.ApplyIfFiniteState]:
    new_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    finite = all_finite(new_updates)
    count = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
    accept = finite | (count > max_consecutive)
    new_updates = optax.tree.where(accept, new_updates, optax.tree.zeros_like(new_updates))
    inner_state = optax.tree.where(accept, inner_state, state.inner_state)
    return new_updates, optax.ApplyIfFiniteState(
        notfinite_count=count, last_finite=finite,
        total_notfinite=state.total_notfinite + (~finite).astype(jnp.int32),
        inner_state=inner_state)

  # optax types the state as any OptState; this update takes (and makes) only its own.
  return optax.GradientTransformationExtraArgs(
      init, cast(optax.TransformUpdateExtraArgsFn, update))


def build_optimizer(config: Config, learning_rate: optax.Schedule, steps_per_epoch: int, *,
                    model: Any = None) -> optax.GradientTransformationExtraArgs:
  """``chain(method's samx transform, add_decayed_weights, sgd | adam)`` or ``chain(method's
  samx transform, adamw)`` for ``config``, inside
  :func:`skip_nonfinite_updates` when ``optimizer.skip_nonfinite > 0``.

  ``model`` (an NNX module, abstract or not) resolves ``optimizer.perturb=normalization``.
  """
  o = config.optimizer
  shared = {**o.shared_options(), **mask_options(o.name, o.perturb, o.adaptive_mask, model)}
  steps = Steps(per_epoch=steps_per_epoch, total=steps_per_epoch * config.epochs)
  shared["rho"] = radius_schedule(o, learning_rate, steps.total)
  head = build_transform(o.name, shared, method_section(config), steps)
  parts: list[optax.GradientTransformation] = [] if head is None else [head]
  if o.weight_decay and o.base != "adamw":
    parts.append(optax.add_decayed_weights(o.weight_decay))
  if o.base == "sgd":
    parts.append(optax.sgd(learning_rate, momentum=o.momentum or None, nesterov=o.nesterov))
  elif o.base == "adamw":
    parts.append(optax.adamw(learning_rate, weight_decay=o.weight_decay))
  else:
    parts.append(optax.adam(learning_rate))
  chain = optax.chain(*parts)
  if o.skip_nonfinite:
    return skip_nonfinite_updates(chain, o.skip_nonfinite)
  return chain
