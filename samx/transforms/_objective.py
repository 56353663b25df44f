"""The objective a sharpness-aware transform differentiates at the perturbed point."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, cast

import jax
import jax.numpy as jnp

PyTree = Any
ApplyFn = Callable[[PyTree, PyTree], PyTree]
LossFn = Callable[[PyTree, PyTree], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """A mean per-example loss split into a model and a loss, over one batch.

  The objective is ``L(w) = mean_i loss_fn(apply_fn(w, inputs), targets)_i``. It is kept in
  two parts, not as one closure, because the SAM family needs more than ``grad L``:
  m-sharpness evaluates it on groups of examples (``inputs`` and ``targets`` are split along
  axis 0), and the logit/Jacobian decomposition needs the model's outputs and the gradient of
  the loss with respect to them.

  ``Objective`` is a pytree whose leaves are ``inputs`` and ``targets`` (``apply_fn`` and
  ``loss_fn`` are static), so it can be built inside or passed into ``jax.jit``.

  Attributes:
    apply_fn: ``(params, inputs) -> outputs``, a pure function; the batch is axis 0 of every
      leaf of ``inputs`` and of ``outputs``.
    loss_fn: ``(outputs, targets) -> losses`` of shape ``(batch,)``, one loss per example.
    inputs: a pytree of arrays with the batch along axis 0.
    targets: a pytree of arrays with the batch along axis 0.
    outputs: optionally, ``apply_fn(params, inputs)`` at the parameters the update is taken at,
      if the caller has them (e.g. as the aux output of its own ``value_and_grad``). Transforms
      that need the clean outputs (:func:`samx.jacobian_sam`) then use them instead of running
      the model again.
    rngs: optionally, randomness for the model (a PRNG key, or a pytree of keys such as
      ``{"dropout": key}``), with no batch axis. The model is then called as
      ``apply_fn(params, inputs, rngs)``. Every pass of one step sees the same ``rngs``: the
      clean and the perturbed pass draw the same dropout masks, so the two gradients are of
      the same function (draw a new key for each step, as for the clean pass). With
      m-sharpness (:meth:`split_into_groups`) group ``k`` gets ``jax.random.fold_in(key, k)``
      for each key, in its clean and its perturbed pass alike.
    surrogate: whether the objective's passes are a *surrogate* of the loss whose gradient the
      transform is given: a function with the same values at ``params`` whose gradient leaves
      something out. BatchNorm normalising with the clean batch's statistics held fixed
      (:func:`samx.models.normalizing_with`) is one: each example's loss then depends on its
      own input alone, as m-sharpness needs, but its gradient misses the statistics'
      dependence on the weights (SGD on it alone trains far worse). The transforms then keep
      the incoming gradient :math:`g` and add only what the perturbation changes in the
      surrogate's gradient, :math:`g_{sam} = g + (\\tilde g_{sam} - \\tilde g)`, with
      :math:`\\tilde g` the surrogate's gradient at ``params`` (with ``group_size``, the mean of
      the groups' gradients, which the transform forms anyway; without, one more gradient
      evaluation), so that at ``rho = 0`` the update is the incoming gradient exactly.
    microbatches: gradient accumulation. With ``k > 1`` every gradient of the objective (its
      :meth:`value_and_grad`, and each one a transform evaluates: the perturbed gradient, the
      ascent steps, the surrogate's) is the mean of the gradients of ``k`` equal consecutive
      slices of the batch, taken one after another in a ``lax.scan`` with a float32 (or wider)
      running sum: the memory of one slice's activations, and the same result as ``k = 1`` up
      to rounding. So a sharpness-aware step over a batch too large for one backward pass
      keeps *one* perturbation, from the whole batch's gradient, as if the batch fitted
      (``optax.MultiSteps`` cannot: it hands the transform one microbatch at a time; see the
      rules of composition in docs/transforms.md). With ``group_size``, the groups are taken in
      ``k`` consecutive chunks (``groups_in_parallel = groups // k`` unless given). Forward-only
      passes (:meth:`losses`, :meth:`apply`) run on the whole batch. With ``rngs``, slice
      ``j`` draws from ``jax.random.fold_in(key, j)``, in its clean and perturbed passes
      alike. ``k`` must divide the batch.

  Example:
    >>> import jax.numpy as jnp, samx
    >>> objective = samx.Objective(
    ...     apply_fn=lambda w, x: x @ w,
    ...     loss_fn=lambda out, y: 0.5 * (out - y) ** 2,
    ...     inputs=jnp.array([[1.0, 0.0], [0.0, 2.0]]),
    ...     targets=jnp.array([1.0, 0.0]))
    >>> loss, grads = objective.value_and_grad(jnp.array([0.0, 1.0]))
    >>> float(loss), grads.tolist()
    (1.25, [-0.5, 2.0])

    A model with dropout takes its key through ``rngs``:

    >>> import jax
    >>> def dropout_model(w, x, key):
    ...   keep = jax.random.bernoulli(key, 0.5, x.shape)
    ...   return (jnp.where(keep, x / 0.5, 0.0)) @ w
    >>> noisy = samx.Objective(dropout_model, lambda out, y: 0.5 * (out - y) ** 2,
    ...                        jnp.ones((4, 2)), jnp.zeros(4), rngs=jax.random.key(0))
    >>> noisy.apply(jnp.ones(2)).shape
    (4,)

    The same gradient, accumulated over two slices of two examples:

    >>> accumulated = samx.Objective(
    ...     lambda w, x: x @ w, lambda out, y: 0.5 * (out - y) ** 2,
    ...     jnp.array([[1.0, 0.0], [0.0, 2.0]] * 2), jnp.array([1.0, 0.0] * 2), microbatches=2)
    >>> accumulated.grad(jnp.array([0.0, 1.0])).tolist()
    [-0.5, 2.0]
  """

  # (params, inputs), or (params, inputs, rngs) with rngs
  apply_fn: Callable[..., PyTree] = dataclasses.field(metadata={"static": True})
  loss_fn: LossFn = dataclasses.field(metadata={"static": True})
  inputs: PyTree
  targets: PyTree
  outputs: PyTree = None
  rngs: PyTree = None
  surrogate: bool = dataclasses.field(default=False, metadata={"static": True})
  microbatches: int = dataclasses.field(default=1, metadata={"static": True})

  def __post_init__(self):
    if (isinstance(self.microbatches, bool) or not isinstance(self.microbatches, int)
        or self.microbatches < 1):
      raise ValueError(
          f"Objective: `microbatches` must be a positive integer (the number of slices the "
          f"batch's gradients are accumulated over; 1 for none); got {self.microbatches!r}.")

  @property
  def model_inputs(self) -> PyTree:
    """What :attr:`model` takes besides the parameters: ``inputs``, or ``(inputs, rngs)``."""
    return self.inputs if self.rngs is None else (self.inputs, self.rngs)

  @property
  def model(self) -> ApplyFn:
    """The model as ``(params, model_inputs) -> outputs``: ``apply_fn`` itself without
    ``rngs``, else ``apply_fn(params, inputs, rngs)`` from ``model_inputs = (inputs, rngs)``.
    The transforms trace and shift this function, so the key travels with the inputs."""
    if self.rngs is None:
      return self.apply_fn
    apply_fn = self.apply_fn
    return lambda params, both: apply_fn(params, both[0], both[1])

  def apply(self, params: PyTree) -> PyTree:
    """The model's outputs at ``params`` on this batch (with ``rngs`` if given)."""
    return self.model(params, self.model_inputs)

  def check_batch(self, transform: str = "Objective") -> None:
    """Raises ``ValueError`` (naming ``transform``) unless every leaf of ``inputs`` and
    ``targets`` has the batch along axis 0 with one common size."""
    try:
      self.batch_size  # noqa: B018
    except ValueError as error:
      raise ValueError(str(error).replace("Objective:", f"{transform}: the objective's", 1)
                       ) from None

  @property
  def batch_size(self) -> int:
    """The common size of axis 0 of every leaf of ``inputs`` and ``targets``."""
    sizes = {
        name: {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(tree)}
        for name, tree in (("inputs", self.inputs), ("targets", self.targets))
    }
    all_sizes = sizes["inputs"] | sizes["targets"]
    if None in all_sizes or len(all_sizes) != 1:
      raise ValueError(
          "Objective: every leaf of `inputs` and `targets` must have the batch along axis 0 "
          f"with one common size; got sizes {sorted(sizes['inputs'], key=str)} for inputs and "
          f"{sorted(sizes['targets'], key=str)} for targets (None = a scalar leaf).")
    (size,) = all_sizes
    return cast(int, size)  # not None: checked above

  def losses(self, params: PyTree) -> jax.Array:
    """Per-example losses at ``params``, shape ``(batch,)``."""
    self.batch_size  # noqa: B018 -- checks the batch before the model sees it
    return self.losses_from_outputs(self.apply(params))

  def losses_from_outputs(self, outputs: PyTree) -> jax.Array:
    """Per-example losses of given model outputs, shape ``(batch,)``."""
    batch = self.batch_size  # checks the batch before the loss sees it
    losses = self.loss_fn(outputs, self.targets)
    if jnp.shape(losses) != (batch,):
      raise ValueError(
          f"Objective: `loss_fn` must return one loss per example, shape ({batch},); got shape "
          f"{jnp.shape(losses)}. Return the unreduced losses; the objective takes their mean.")
    return losses

  def loss(self, params: PyTree) -> jax.Array:
    """The mean loss at ``params``."""
    return jnp.mean(self.losses(params))

  def value_and_grad(
      self, params: PyTree, *, axis_name: Hashable | None = None
  ) -> tuple[jax.Array, PyTree]:
    """The mean loss at ``params`` and its gradient with respect to ``params``.

    With ``axis_name`` (inside ``jax.pmap`` or ``jax.shard_map``), the loss and gradient of the
    *global* batch: each device's are averaged over the axis. Under ``shard_map`` this is not
    the same as differentiating the local loss with respect to replicated parameters, which
    JAX sums over devices.
    """
    at = params if axis_name is None else as_varying(params, axis_name)
    local = self.mean_over_microbatches(lambda part: jax.value_and_grad(part.loss)(at))
    return local if axis_name is None else jax.lax.pmean(local, axis_name)

  def grad(self, params: PyTree, *, axis_name: Hashable | None = None) -> PyTree:
    """The gradient of the mean loss; see :meth:`value_and_grad` for ``axis_name``."""
    return self.value_and_grad(params, axis_name=axis_name)[1]

  def mean_over_microbatches(self, fn: Callable[[Objective], PyTree]) -> PyTree:
    """``fn(self)``, or with ``microbatches = k > 1`` the mean of ``fn`` over the batch's ``k``
    consecutive slices (each an objective with ``microbatches=1``), evaluated one after
    another in a ``lax.scan`` with a running sum in at least float32. For ``fn`` a mean over
    examples (a loss, a gradient), the result is ``fn(self)`` up to rounding.

    Raises:
      ValueError: if ``microbatches`` does not divide the batch size.
    """
    if self.microbatches == 1:
      return fn(self)
    batch, count = self.batch_size, self.microbatches
    if batch % count:
      raise ValueError(
          f"Objective: `microbatches`={count} must divide the batch size {batch}.")
    slices = dataclasses.replace(self, microbatches=1).split_into_groups(batch // count)
    shapes = jax.eval_shape(fn, jax.tree.map(lambda leaf: leaf[0], slices))
    zeros = jax.tree.map(
        lambda leaf: jnp.zeros(leaf.shape, jnp.result_type(jnp.float32, leaf.dtype)), shapes)

    def add_slice(total, part):
      return jax.tree.map(lambda t, r: t + r.astype(t.dtype), total, fn(part)), None

    total, _ = jax.lax.scan(add_slice, zeros, slices)
    return jax.tree.map(lambda t, like: (t / count).astype(like.dtype), total, shapes)

  def split_into_groups(self, group_size: int) -> Objective:
    """The objective with every batch leaf reshaped to ``(batch // group_size, group_size, ...)``.

    Mapping :meth:`value_and_grad` over axis 0 of the result (``jax.vmap``) gives each group's
    own mean loss and gradient, the building block of m-sharpness. ``rngs`` (if any) becomes
    one key per group, ``jax.random.fold_in(key, k)`` for group ``k``, stacked on axis 0.
    Each group is evaluated whole (``microbatches=1``).

    Raises:
      ValueError: if ``group_size`` is not a positive integer that divides the batch.
    """
    batch = self.batch_size
    if not isinstance(group_size, int) or group_size < 1 or batch % group_size:
      raise ValueError(
          f"group_size must be a positive integer that divides the batch size {batch}; got "
          f"group_size={group_size!r}.")

    def regroup(leaf):
      return jnp.reshape(leaf, (batch // group_size, group_size, *jnp.shape(leaf)[1:]))

    def per_group(key):
      return jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(batch // group_size))

    return dataclasses.replace(
        self, inputs=jax.tree.map(regroup, self.inputs),
        targets=jax.tree.map(regroup, self.targets),
        outputs=None if self.outputs is None else jax.tree.map(regroup, self.outputs),
        rngs=None if self.rngs is None else jax.tree.map(per_group, self.rngs),
        microbatches=1)

  @classmethod
  def from_nnx(
      cls, model: Any, loss_fn: LossFn, inputs: PyTree, targets: PyTree, *, wrt: Any = None,
      surrogate: bool = False, microbatches: int = 1,
  ) -> Objective:
    """An objective over the parameters of a Flax NNX module.

    ``params`` for this objective are ``nnx.state(model, wrt)`` (by default ``nnx.Param``),
    the same tree ``nnx.Optimizer(model, tx, wrt=wrt)`` hands to ``tx.update``. Every other
    variable (BatchNorm statistics, RNG counters, ...) is frozen at its current value: a
    forward pass through the objective uses it but never writes it back. So with BatchNorm in
    training mode the perturbed pass normalises with its own batch statistics, and the running
    averages are left to the caller's clean pass, as SAM prescribes. RNG state (dropout) is
    frozen as well: every pass through the objective draws from the same keys. ``surrogate``
    is the field of the same name (``True`` for a model from
    :func:`samx.models.normalizing_with`), and so is ``microbatches``.

    Example:
      >>> import jax.numpy as jnp, optax, samx
      >>> from flax import nnx
      >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
      >>> xent = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y)
      >>> objective = samx.Objective.from_nnx(model, xent, jnp.ones((4, 3)), jnp.zeros(4, int))
      >>> loss, grads = objective.value_and_grad(nnx.state(model, nnx.Param))
      >>> grads["kernel"].shape
      (3, 2)
    """
    from flax import nnx  # Flax is only needed by callers that use NNX modules.

    wrt = nnx.Param if wrt is None else wrt
    graphdef, _, frozen = nnx.split(model, wrt, ...)

    def apply_fn(params, batch_inputs):
      return nnx.merge(graphdef, params, frozen, copy=True)(batch_inputs)

    return cls(apply_fn=apply_fn, loss_fn=loss_fn, inputs=inputs, targets=targets,
               surrogate=surrogate, microbatches=microbatches)


jax.tree_util.register_dataclass(Objective)


def _varying_axes(leaf: jax.Array) -> frozenset:
  aval = jax.typeof(leaf)
  manual = getattr(aval, "manual_axis_type", None)
  if manual is not None:
    return frozenset(manual.varying)
  return frozenset(getattr(aval, "vma", ()))


def as_varying(tree: PyTree, axis_name: Hashable) -> PyTree:
  """Marks ``tree`` as varying along the mapped ``axis_name`` (where it is not already).

  Under ``shard_map``, the gradient with respect to a value that is the same on every device
  (replicated parameters) is summed over devices by autodiff. Differentiating with respect to a
  varying copy instead gives each device its local gradient, which the caller then averages
  explicitly; under ``pmap`` the cast changes nothing.
  """
  names = tuple(axis_name) if isinstance(axis_name, tuple) else (axis_name,)

  def cast(leaf):
    missing = tuple(name for name in names if name not in _varying_axes(leaf))
    if not missing:
      return leaf
    if hasattr(jax.lax, "pcast"):
      return jax.lax.pcast(leaf, missing, to="varying")
    # JAX releases before `pcast`
    return jax.lax.pvary(leaf, missing)  # pyright: ignore[reportAttributeAccessIssue]

  return jax.tree.map(cast, tree)
