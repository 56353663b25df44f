"""The run's optax chain: the samx transform, weight decay and the base optimizer, with the
learning-rate schedule."""

from __future__ import annotations

import optax

import samx
from samx.train.config import OptimizerConfig, ScheduleConfig


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


def samx_transform(optimizer: OptimizerConfig, steps_per_epoch: int
                   ) -> optax.GradientTransformationExtraArgs | None:
  """The samx transform for ``optimizer.name`` (``None`` for ``sgd`` and ``penalty``)."""
  o = optimizer
  common = {"adaptive": o.adaptive or o.name == "asam", "eta": o.eta, "group_size": o.group_size,
            "groups_in_parallel": o.groups_in_parallel}
  if o.name in ("sam", "asam"):
    return samx.sam(o.rho, **common)
  if o.name == "saner":
    warmup = max(1, round(o.warmup_epochs * steps_per_epoch))
    return samx.saner(o.rho, alpha=o.alpha, warmup_steps=warmup, gsam_alpha=o.gsam_alpha,
                      **common)
  if o.name == "gsam":
    return samx.gsam(o.rho, o.gsam_alpha, **common)
  if o.name == "lsam":
    return samx.logit_sam(o.rho, **common)
  if o.name == "jsam":
    return samx.jacobian_sam(o.rho, **common)
  return None


def build_optimizer(optimizer: OptimizerConfig, schedule: ScheduleConfig, *, total_steps: int,
                    steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """``chain(samx transform, add_decayed_weights, sgd | adam)`` for the configuration."""
  learning_rate = learning_rate_schedule(optimizer, schedule, total_steps, steps_per_epoch)
  head = samx_transform(optimizer, steps_per_epoch)
  parts = [] if head is None else [head]
  if optimizer.weight_decay:
    parts.append(optax.add_decayed_weights(optimizer.weight_decay))
  if optimizer.base == "sgd":
    parts.append(optax.sgd(learning_rate, momentum=optimizer.momentum or None,
                           nesterov=optimizer.nesterov))
  else:
    parts.append(optax.adam(learning_rate))
  return optax.chain(*parts)
