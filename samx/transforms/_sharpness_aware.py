"""What every SAM-family transform shares: its options, its state, and the transform itself.

A SAM-family transform is :func:`sharpness_aware_transform` given three things: the options of
:func:`samx.sam` (:class:`SAMOptions`), how the gradient at ``w + eps`` is formed (a
``PerturbedLoss``), and how that gradient is combined with the clean one (a
:class:`Combination`, which also says what the transform keeps in its state).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from samx.transforms import _masks, _tree
from samx.transforms._arguments import (
    ArgumentError,
    check_count,
    check_flag,
    check_number,
    is_traced,
)
from samx.transforms._composition import warn_about_composition
from samx.transforms._objective import Objective
from samx.transforms._perturbation import (
  Ascent,
  Perturbation,
  asam_perturbation,
  iterated_ascent,
  masked_perturbation,
  sam_perturbation,
)
from samx.transforms._perturbed_gradient import (
  PerturbedLoss,
  clean_and_perturbed_gradients,
  loss_at_perturbation,
)
from samx.transforms._structured_groups import (
  GROUP_PATHS,
  AscentRule,
  GroupPlan,
  describe,
  plan_groups,
)

PyTree = Any
ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


def value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array | float:
  """A number (kept weakly typed, so it takes the parameters' precision), or a schedule
  evaluated at ``count``."""
  return jnp.asarray(value(count)) if callable(value) else value


@dataclasses.dataclass(frozen=True)
class SAMOptions:
  """The options every SAM-family transform shares, documented in :func:`samx.sam`.

  Checked by :func:`check_options` when the transform is built.
  """

  adaptive: bool
  eta: float
  group_size: int | None
  groups_in_parallel: int | None
  groups_unroll: int | bool
  axis_name: Hashable | None
  perturb_mask: _masks.Mask = None
  adaptive_mask: _masks.Mask = None
  group_path: str = "layers"
  ascent_steps: int | None = None
  ascent_optimizer: optax.GradientTransformation | None = None

  def ascent(self, params: PyTree, *, transform: str) -> Ascent | None:
    """The ascent of ``ascent_steps`` steps (with ``ascent_optimizer``), or ``None`` for the
    single step of :meth:`perturbation`."""
    steps = 1 if self.ascent_steps is None else self.ascent_steps
    if steps == 1 and self.ascent_optimizer is None:
      return None
    return iterated_ascent(self.perturbation(params, transform=transform), steps,
                           self.ascent_optimizer)

  def ascent_rule(self, params: PyTree, *, transform: str) -> AscentRule:
    """The same ascent step as :meth:`perturbation`, as flags per leaf of ``params``."""
    perturbed = _masks.mask_leaves("perturb_mask", self.perturb_mask, params,
                                   transform=transform)
    scaled = _masks.mask_leaves("adaptive_mask", self.adaptive_mask, params,
                                transform=transform)
    return AscentRule(perturbed, scaled, self.adaptive, self.eta)

  def perturbation(self, params: PyTree, *, transform: str) -> Perturbation:
    """The ascent step for ``params``: ASAM's if ``adaptive`` (``T = 1`` outside
    ``adaptive_mask``), else SAM's, on the leaves of ``perturb_mask`` only.

    Raises:
      ArgumentError: if a mask does not fit ``params``, or ``perturb_mask`` selects no leaf.
    """
    perturbed = _masks.mask_leaves("perturb_mask", self.perturb_mask, params,
                                   transform=transform)
    if perturbed is not None and not any(perturbed):
      raise ArgumentError(
          "perturb_mask",
          f"{transform}: `perturb_mask` selects no parameter, so eps would be zero and every "
          "step plain SGD at twice its cost; select at least one leaf (for SAM-ON, a model with "
          "normalization layers).")
    if not self.adaptive:
      return masked_perturbation(sam_perturbation, perturbed)
    scaled = _masks.mask_leaves("adaptive_mask", self.adaptive_mask, params,
                                transform=transform)
    if scaled is not None and perturbed is not None:
      scaled = [flag for flag, keep in zip(scaled, perturbed, strict=True) if keep]
    return masked_perturbation(asam_perturbation(self.eta, scaled), perturbed)


def check_options(options: SAMOptions, *, transform: str) -> None:
  """Raises an :class:`ArgumentError` naming the first bad option of ``options``."""
  check_number("eta", options.eta, allow_schedule=False, transform=transform)
  check_flag("adaptive", options.adaptive, transform=transform)
  check_count("group_size", options.group_size, minimum=1, allow_none=True, transform=transform)
  check_count("groups_in_parallel", options.groups_in_parallel, minimum=1, allow_none=True,
              transform=transform)
  if not isinstance(options.groups_unroll, bool):
    check_count("groups_unroll", options.groups_unroll, minimum=1, allow_none=False,
                transform=transform)
  if options.group_path not in GROUP_PATHS:
    raise ArgumentError(
        "group_path",
        f"{transform}: `group_path` must be one of {', '.join(map(repr, GROUP_PATHS))}; got "
        f"{options.group_path!r}.")
  check_count("ascent_steps", options.ascent_steps, minimum=1, allow_none=True,
              transform=transform)
  optimizer = options.ascent_optimizer
  if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                    and callable(getattr(optimizer, "update", None))):
    raise ArgumentError(
        "ascent_optimizer",
        f"{transform}: `ascent_optimizer` must be an optax GradientTransformation (with init "
        f"and update), e.g. optax.adam(1.0); got {optimizer!r}.")
  if options.groups_in_parallel is not None and options.group_size is None:
    raise ArgumentError(
        "groups_in_parallel", f"{transform}: `groups_in_parallel` needs `group_size` to be set.")
  _masks.check_mask("perturb_mask", options.perturb_mask, transform=transform)
  _masks.check_mask("adaptive_mask", options.adaptive_mask, transform=transform)
  if options.adaptive_mask is not None and not options.adaptive:
    raise ArgumentError(
        "adaptive_mask",
        f"{transform}: `adaptive_mask` chooses which leaves ASAM scales by |w| + eta; it needs "
        "`adaptive=True`.")
  if options.axis_name is not None and not isinstance(options.axis_name, Hashable):
    raise ArgumentError(
        "axis_name",
        f"{transform}: `axis_name` must be a mesh or pmap axis name; got {options.axis_name!r}.")


class SAMState(NamedTuple):
  """State of :func:`samx.sam`, and of every variant that keeps nothing more than the count.

  That is :func:`samx.gsam` (``samx.GSAMState`` is an alias of this class),
  :func:`samx.logit_sam` and :func:`samx.jacobian_sam`.

  Attributes:
    count: the number of updates taken so far (int32); schedules (``rho``, GSAM's ``alpha``)
      are evaluated at it.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  (optax's name)


class Combination(NamedTuple):
  """How a transform turns the clean and the perturbed gradient into its update.

  Attributes:
    init: ``count -> state``: the transform's state before its first update, given the step
      count (a zero int32). The state is a NamedTuple with a ``count`` field.
    rule: ``(g, g_sam, state) -> (update, stats)``, with ``g`` the clean gradient, ``g_sam``
      the perturbed one and ``state.count`` the current step; ``stats`` is a pytree of
      floating-point arrays to record (or ``None``). With ``combine_per_group`` the rule is
      applied to each group's ``g_k`` and ``g_sam_k``, and both its results are averaged.
    record: ``(state, stats) -> state``: the state after the update (before the count
      advances, which the transform does).
  """

  init: Callable[[jax.Array], Any]
  rule: Callable[[PyTree, PyTree, Any], tuple[PyTree, Any]]
  record: Callable[[Any, Any], Any] = lambda state, stats: state


def _perturbed_as_is(clean: PyTree, perturbed: PyTree, state: SAMState) -> tuple[PyTree, None]:
  """SAM's rule: the update is the perturbed gradient itself."""
  del clean, state
  return perturbed, None


#: The combination of SAM, L-SAM and J-SAM: ``update = g_sam``, with a :class:`SAMState`.
PERTURBED_AS_IS = Combination(init=SAMState, rule=_perturbed_as_is)


def check_update_arguments(
    transform: str, params: PyTree | None, objective: Objective | None,
    updates: PyTree = None,
) -> Objective:
  """Explains the call if ``update`` was not given the objective and the parameters, if
  ``updates`` (the gradient) does not have the structure and shapes of ``params``, or if the
  objective's batch is not one size (checked here, before any model or loss sees it); returns
  the objective, known from here on to be one."""
  if objective is None:
    raise ValueError(
        f"{transform} needs the objective: call "
        "`tx.update(grads, state, params, objective=samx.Objective(apply_fn, loss_fn, inputs, "
        "targets))`.")
  if not isinstance(objective, Objective):
    raise ValueError(
        f"{transform}: `objective` must be a samx.Objective; got {type(objective).__name__}.")
  if params is None:
    raise ValueError(
        f"{transform} needs the current parameters: call "
        "`tx.update(grads, state, params, objective=...)`.")
  check_not_masked(transform, params)
  if updates is not None:
    check_like_params(transform, "updates", updates, params)
  objective.check_batch(transform)
  warn_about_composition(transform)
  return objective


def check_not_masked(transform: str, params: PyTree) -> None:
  """Raises an :class:`ArgumentError` if ``params`` has ``optax.MaskedNode`` leaves: the
  transform is inside ``optax.masked`` or ``optax.multi_transform``, which hide the other
  parameters from it, while the model it evaluates at ``w + eps`` needs all of them."""
  masked = jax.tree.leaves(params, is_leaf=lambda leaf: isinstance(leaf, optax.MaskedNode))
  if any(isinstance(leaf, optax.MaskedNode) for leaf in masked):
    raise ArgumentError(
        "params",
        f"{transform} is inside optax.masked or optax.multi_transform, which hide some "
        "parameters from it, but it evaluates the model at w + eps, which needs all of them. "
        f"To perturb only some parameters, give the mask to the transform itself: "
        f"{transform}(rho, perturb_mask=mask); to give groups of parameters their own "
        f"optimizers, put it first: optax.chain({transform}(rho), optax.multi_transform(...)).")


def check_like_params(transform: str, argument: str, tree: PyTree, params: PyTree) -> None:
  """Raises an :class:`ArgumentError` naming ``argument`` unless ``tree`` has the structure and
  the leaf shapes of ``params``."""
  tree_structure, params_structure = jax.tree.structure(tree), jax.tree.structure(params)
  if tree_structure != params_structure:
    paths = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}
    wanted = {jax.tree_util.keystr(path)
              for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    missing, extra = sorted(wanted - paths), sorted(paths - wanted)
    detail = "; ".join(part for part in (
        f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
        f"not in the parameters {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}"
        if extra else "") if part) or (
        f"{tree_structure.num_leaves} leaves in another structure than the parameters' "
        f"{params_structure.num_leaves}")
    raise ArgumentError(
        argument, f"{transform}: `{argument}` must have the structure of `params` (the "
        f"gradient of each parameter); {detail}.")
  for (path, leaf), wanted in zip(jax.tree_util.tree_leaves_with_path(tree),
                                  jax.tree.leaves(params), strict=True):
    if jnp.shape(leaf) != jnp.shape(wanted):
      raise ArgumentError(
          argument, f"{transform}: `{argument}` must have the shapes of `params`; "
          f"{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}, the parameter "
          f"{jnp.shape(wanted)}.")


def valid_radius(rho: ScalarOrSchedule, count: jax.Array) -> jax.Array | bool:
  """Whether ``rho`` at ``count`` is a finite number >= 0 (a number was checked when the
  transform was built; a schedule, or a traced number from ``optax.inject_hyperparams``, is
  checked at each step)."""
  if not callable(rho) and not is_traced(rho):
    return True
  value = jnp.asarray(value_at(rho, count))
  return jnp.isfinite(value) & (value >= 0)


def nonfinite_rule(finite: jax.Array | bool, update: PyTree, new_state: Any, old_state: Any
                   ) -> tuple[PyTree, Any]:
  """samx's one rule for a step that cannot be taken: ``(update, state)`` as they are if
  ``finite``, else an update that is NaN in every entry and the state as it was before the step
  (its count included), so that nothing non-finite enters any transform's state.

  ``finite`` is false when the clean gradient the step uses (or its norm), the perturbed
  gradient, or a value of a schedule (``rho`` < 0, NaN) is not finite.
  """
  if finite is True:
    return update, new_state
  update = jax.tree.map(lambda u: jnp.where(finite, u, jnp.nan).astype(u.dtype), update)
  state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)
  return update, state


def sharpness_aware_transform(
    transform: str,
    rho: ScalarOrSchedule,
    options: SAMOptions,
    *,
    perturbed_loss: PerturbedLoss = loss_at_perturbation,
    combination: Combination = PERTURBED_AS_IS,
    combine_per_group: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The optax transform of every SAM-family method.

  Each ``update(grads, state, params, *, objective)`` forms the clean gradient :math:`g` and
  the perturbed gradient :math:`g_{sam}` (the gradient of ``perturbed_loss`` at
  :math:`w + \epsilon`, :math:`\epsilon` from ``rho`` and ``options``; see
  ``clean_and_perturbed_gradients``), returns the update of ``combination.rule(g, g_sam,
  state)`` and advances the step count, saturating at the largest int32.

  Args:
    transform: the public name, e.g. ``"samx.sam"``, for error messages.
    rho: the ascent radius, a number >= 0 or an optax schedule of the step count.
    options: the options of :func:`samx.sam`, checked here.
    perturbed_loss: how the gradient at ``w + eps`` is formed (SAM's: ``L(w + eps)``).
    combination: how ``(g, g_sam)`` becomes the update, and the state kept (SAM's: ``g_sam``).
    combine_per_group: apply ``combination.rule`` to each group's ``g_k`` and ``g_sam_k``
      (each device's groups under ``axis_name``) and average its results, instead of applying
      it to the averages. Needs ``options.group_size``.

  Raises:
    ArgumentError: naming the first bad argument among ``rho``, ``options`` and
      ``combine_per_group``.
  """
  check_number("rho", rho, transform=transform)
  check_options(options, transform=transform)
  check_combine_per_group(combine_per_group, options, transform=transform)

  def init_fn(params: PyTree) -> Any:
    del params
    return combination.init(jnp.zeros([], jnp.int32))

  def update_fn(
      updates: PyTree, state: Any, params: PyTree | None = None, *,
      objective: Objective | None = None, **extra_args: Any,
  ) -> tuple[PyTree, Any]:
    del extra_args
    objective = check_update_arguments(transform, params, objective, updates)
    per_group = (lambda g, g_sam: combination.rule(g, g_sam, state)) if combine_per_group else None
    gradients = sharpness_aware_gradients(
        transform, rho, options, objective, params, updates, state.count,
        perturbed_loss=perturbed_loss, per_group=per_group)
    if combine_per_group:
      combined, stats = gradients
      finite = _tree.all_finite((combined, stats))
    else:
      clean, perturbed = gradients
      combined, stats = combination.rule(clean, perturbed, state)
      # Checked on the rule's inputs rather than its output (which XLA would then hold once
      # more before the final select; measured in benchmarks/step_cost.py). The clean
      # gradient's norm over the perturbed leaves is the ascent step's own reduction (XLA
      # computes it once, and still drops the caller's backward pass to the other leaves,
      # which SAM-ON never uses); it is not finite for a non-finite gradient, or one whose
      # norm overflows.
      used = _masks.select(clean, _masks.mask_leaves("perturb_mask", options.perturb_mask,
                                                     params, transform=transform))
      finite = jnp.isfinite(_tree.global_norm(used)) & _tree.all_finite(perturbed)
    finite = finite & valid_radius(rho, state.count)
    new_state = combination.record(state, stats)
    new_state = new_state._replace(count=optax.safe_increment(state.count))
    return nonfinite_rule(finite, combined, new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sharpness_aware_gradients(
    transform: str, rho: ScalarOrSchedule, options: SAMOptions, objective: Objective,
    params: PyTree, updates: PyTree, count: jax.Array, *,
    perturbed_loss: PerturbedLoss = loss_at_perturbation,
    per_group: Callable[[PyTree, PyTree], PyTree] | None = None,
) -> PyTree:
  """``(g, g_sam)`` of one step with ``options`` (see ``clean_and_perturbed_gradients``; with
  ``per_group``, what it makes of each group's pair, averaged), ``rho`` taken at ``count``."""
  return clean_and_perturbed_gradients(
      objective, params, updates, value_at(rho, count),
      perturbation=options.perturbation(params, transform=transform),
      perturbed_loss=perturbed_loss, per_group=per_group,
      group_size=options.group_size, groups_in_parallel=options.groups_in_parallel,
      groups_unroll=options.groups_unroll, axis_name=options.axis_name,
      group_path=options.group_path,
      ascent_rule=options.ascent_rule(params, transform=transform),
      ascent=options.ascent(params, transform=transform))


def check_combine_per_group(combine_per_group: Any, options: SAMOptions, *, transform: str
                            ) -> None:
  """Raises an :class:`ArgumentError` unless ``combine_per_group`` is a flag that the groups of
  ``options`` give a meaning to."""
  check_flag("combine_per_group", combine_per_group, transform=transform)
  if combine_per_group and options.group_size is None:
    raise ArgumentError(
        "combine_per_group",
        f"{transform}: `combine_per_group` applies the rule to each group of "
        "`group_size` examples, so it needs `group_size` (the per-device batch for the per-device "
        "rule of big_vision); without groups there is one group and nothing to change.")


def group_plan(
    objective: Objective, params: PyTree, *, group_size: int, adaptive: bool = False,
    eta: float = 0.01, perturb_mask: _masks.Mask = None, adaptive_mask: _masks.Mask = None,
) -> GroupPlan:
  """Which path each parameter leaf takes in a transform with ``group_size`` (``group_path=
  "layers"``, the default): a layer weight (``"dense"``/``"conv"``: no per-group copy, with
  ghost norms or explicit group gradients), ``"vmap"`` (a per-group copy, and why), or ``"not
  perturbed"``. The transforms log the same plan (logger ``"samx"``, level INFO) when traced.

  The other arguments are the transform's (:func:`samx.sam`). With ``combine_per_group``
  (GSAM's, SANER's per-group rules) every leaf takes the vmap path, as each group's whole
  gradient is needed.

  Args:
    objective: the model, the loss and a batch (its shapes are what matter).
    params: the parameters.
    group_size: the examples per group, which must divide the batch.
    adaptive: ASAM's ascent step, as in :func:`samx.sam`.
    eta: ASAM's offset.
    perturb_mask: the perturbed parameters (optax mask convention).
    adaptive_mask: with ``adaptive``, the parameters scaled by ``|w| + eta``.

  Returns:
    A :class:`samx.GroupPlan`; ``print`` it for a table of the leaves.

  Example:
    >>> import jax, jax.numpy as jnp, samx
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> objective = samx.Objective(
    ...     apply_fn=lambda p, x: jnp.tanh(x @ p["w"] + p["b"]),
    ...     loss_fn=lambda out, y: jnp.sum((out - y) ** 2, axis=-1),
    ...     inputs=jnp.ones((4, 3)), targets=jnp.zeros((4, 2)))
    >>> print(samx.group_plan(objective, params, group_size=1))
    group_size=1: 1 layer weights, 1 leaves by vmap
      ['b']  vmap          used by broadcast_in_dim
      ['w']  dense         ghost norm; rows=1, fan_in=3, fan_out=2
  """
  transform = "samx.group_plan"
  options = SAMOptions(adaptive, eta, group_size, None, True, None, perturb_mask, adaptive_mask)
  check_options(options, transform=transform)
  if group_size is None:
    raise ArgumentError("group_size", f"{transform}: `group_size` must be a positive integer.")
  objective.split_into_groups(group_size)  # checks that it divides the batch
  plan = plan_groups(objective, params, group_size,
                     options.ascent_rule(params, transform=transform))
  return describe(plan, params, group_size)
