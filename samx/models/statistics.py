r"""Which BatchNorm statistics a sharpness-aware method's perturbed passes normalise with.

With BatchNorm in training mode a model's output on one example depends on the whole batch
it is normalised with. For SAM on the whole batch that is harmless: the perturbed pass at
:math:`w + \epsilon` normalises the same batch with its own statistics, the very function the
clean pass differentiated at :math:`w`. Under m-sharpness it is not: a group of ``m`` examples
normalised with its own statistics is a different function (with ``m = 1`` and a dense layer,
every feature normalises to zero), and 1-SAM on a BatchNorm ResNet then does not train.

Holding the *clean pass's* batch statistics (at :math:`w`) fixed in the perturbed passes makes
each example's loss a function of its own input alone,

.. math::
  L_i(w) = \ell\big(f(w, x_i; \mu_B, \sigma^2_B), y_i\big),
  \qquad \epsilon_i = \rho\, \nabla L_i(w) / \lVert \nabla L_i(w) \rVert,

with :math:`\mu_B, \sigma^2_B` the batch's statistics at :math:`w`, treated as constants. The
two functions here give those statistics and a model that normalises with them:

* :func:`batch_statistics` runs a training-mode pass and returns the statistics every
  BatchNorm layer normalised with (exactly, not recovered from the running averages), while
  updating the running averages as the pass alone would;
* :func:`normalizing_with` is a copy of the model whose BatchNorm layers normalise with given
  statistics held fixed; :meth:`samx.Objective.from_nnx` over it, with ``surrogate=True``,
  gives the transforms an objective whose passes, per group or whole, use them.

Held fixed, the statistics drop out of the gradient, and SGD on the fixed-statistics gradient
alone trains far worse than on the true one (on the CIFAR-10 ResNet of ``benchmarks/``, SAM at
``rho = 0`` with them reached 0.21 test accuracy against SGD's 0.27 after 5 epochs). So the
objective is a *surrogate* (:class:`samx.Objective`): the update is the clean, training-mode
gradient plus what the perturbation changes in the fixed-statistics gradient,

.. math::
  g + \frac{1}{n} \sum_i \big(\nabla L_i(w + \epsilon_i) - \nabla L_i(w)\big),

which is SGD's gradient at ``rho = 0``.

The training engine's ``optimizer.perturbed_statistics`` chooses between the groups' own
statistics (``"group"``), the clean batch's (``"batch"``) and the running averages
(``"running"``); see :mod:`samx.train.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flax import nnx

ModuleT = TypeVar("ModuleT", bound=nnx.Module)


def _batch_norms(model: nnx.Module) -> list[nnx.BatchNorm]:
  return [module for _, module in nnx.iter_modules(model) if isinstance(module, nnx.BatchNorm)]


def batch_statistics(model: ModuleT, fn: Callable[[ModuleT], Any]) -> tuple[Any, nnx.State]:
  """``fn(model)`` and the batch statistics its BatchNorm layers normalised with.

  ``fn`` runs the model in training mode (e.g. ``lambda m: m(x)``); it may be differentiated
  (inside ``nnx.grad`` or ``jax.grad`` of a merged model). The statistics are read exactly: for
  the call every BatchNorm's momentum is set to 0, so its running mean and variance become the
  batch's; then the running averages are set to ``momentum * old + (1 - momentum) * batch``,
  what the call would have written. A BatchNorm that ``fn`` does not call (or calls with
  ``use_running_average=True``) reports its running averages.

  Args:
    model: an NNX module; its BatchNorm layers' running averages are updated in place.
    fn: ``model -> output``.

  Returns:
    ``(output, statistics)``: ``statistics`` is an ``nnx.State`` of the model's
    ``nnx.BatchStat`` variables holding each layer's batch mean and variance (float32).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import samx
    >>> norm = nnx.BatchNorm(2, momentum=0.9, rngs=nnx.Rngs(0))
    >>> x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    >>> y, stats = samx.models.batch_statistics(norm, lambda m: m(x))
    >>> stats["mean"][...].tolist(), stats["var"][...].tolist()
    ([2.0, 4.0], [1.0, 4.0])
    >>> [round(v, 6) for v in norm.mean[...].tolist()]  # the running mean, updated once
    [0.2, 0.4]
  """
  norms = _batch_norms(model)
  momenta = [norm.momentum for norm in norms]
  before = [(norm.mean[...], norm.var[...]) for norm in norms]
  for norm in norms:
    norm.momentum = 0.0
  try:
    output = fn(model)
  finally:
    for norm, momentum in zip(norms, momenta, strict=True):
      norm.momentum = momentum
  statistics = nnx.clone(nnx.state(model, nnx.BatchStat))
  for norm, momentum, (mean, var) in zip(norms, momenta, before, strict=True):
    # Flax's own update, term for term, so the running averages are what the call writes.
    norm.mean[...] = momentum * mean + (1 - momentum) * norm.mean[...]
    norm.var[...] = momentum * var + (1 - momentum) * norm.var[...]
  return output, statistics


def normalizing_with(model: ModuleT, statistics: nnx.State | None = None) -> ModuleT:
  """A copy of ``model`` whose BatchNorm layers normalise with ``statistics`` held fixed.

  The copy's BatchNorm layers use ``use_running_average=True`` with ``statistics`` (from
  :func:`batch_statistics`; ``None``: the model's own running averages) in place of their running
  averages; nothing else changes (dropout stays as it is). At the statistics of a batch it
  computes what the training-mode model computes on that batch (in float32; in bfloat16 the
  fixed statistics are rounded to it), but each example's output depends on its own input
  alone, so a group of examples, or one, can be perturbed on its own (1-SAM).

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import samx
    >>> rngs = nnx.Rngs(0)
    >>> model = nnx.Sequential(nnx.Linear(3, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs),
    ...                        nnx.Linear(4, 2, rngs=rngs))
    >>> x, y = jnp.arange(12.0).reshape(4, 3), jnp.array([0, 1, 0, 1])
    >>> logits, stats = samx.models.batch_statistics(model, lambda m: m(x))
    >>> fixed = samx.models.normalizing_with(model, stats)
    >>> bool(jnp.allclose(fixed(x), logits, atol=1e-5))  # the same function on this batch
    True
    >>> bool(jnp.allclose(fixed(x[:1]), logits[:1], atol=1e-5))  # and on one example alone
    True
    >>> xent = optax.softmax_cross_entropy_with_integer_labels
    >>> objective = samx.Objective.from_nnx(fixed, xent, x, y, surrogate=True)  # for 1-SAM
  """
  copy = nnx.clone(model)
  if not _batch_norms(copy):
    return copy
  if statistics is not None:
    nnx.update(copy, statistics)
  return nnx.view(copy, only=nnx.BatchNorm, use_running_average=True)
