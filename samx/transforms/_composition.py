"""Warnings, once each, about optax compositions that change what a samx transform computes.

Two such places can be seen from inside ``update`` when it runs in Python (when it is traced
under ``jax.jit``, or at every call without it), by looking at the optax frames that called it:

- a transform *before* samx in an ``optax.chain`` (``clip_by_global_norm``, a scaling): samx's
  update is a gradient it computes itself from the objective, so what came before changes only
  the direction of ``eps``;
- ``optax.MultiSteps`` around or after samx: samx's step count then advances once per
  micro-batch (outside) or once per accumulation (inside, where it also sees the accumulated
  gradient but only the current micro-batch's objective), so schedules of the count, SANER's
  ``warmup_steps``, LookSAM's ``k`` and AE-SAM's ``total_steps`` must be given in those units.

Looking at frames is best-effort: an optax that calls its transforms differently gives no
warning, never an error. ``warnings.filterwarnings("ignore", category=samx.CompositionWarning)``
turns them off.
"""

from __future__ import annotations

import sys
import warnings


class CompositionWarning(UserWarning):
  """An optax composition around a samx transform that changes what it computes."""


_warned: set[tuple[str, str]] = set()


_LIBRARIES = ("samx", "optax", "jax", "flax", "chex")


def _caller_stacklevel() -> int:
  """The ``stacklevel`` of the first frame outside samx and the libraries it runs in (the
  user's call of ``update``), so the warning points at the user's code."""
  frame, level = sys._getframe(2), 2
  while frame is not None:
    if str(frame.f_globals.get("__name__", "")).split(".")[0] not in _LIBRARIES:
      return level
    frame, level = frame.f_back, level + 1
  return 2


def _warn_once(transform: str, kind: str, message: str) -> None:
  if (transform, kind) in _warned:
    return
  _warned.add((transform, kind))
  warnings.warn(message, CompositionWarning, stacklevel=_caller_stacklevel())


def _multi_steps_type() -> type | None:
  optax = sys.modules.get("optax")
  return getattr(optax, "MultiSteps", None) if optax is not None else None


def _belongs_to(function, cls: type, depth: int = 2) -> bool:
  """Whether ``function`` is a method of a ``cls`` instance, or wraps one (optax wraps a plain
  ``GradientTransformation``'s ``update`` to drop the extra arguments)."""
  if isinstance(getattr(function, "__self__", None), cls):
    return True
  if depth == 0:
    return False
  for cell in getattr(function, "__closure__", None) or ():
    try:
      content = cell.cell_contents
    except ValueError:
      continue
    inner = getattr(content, "update", content)
    if callable(inner) and _belongs_to(inner, cls, depth - 1):
      return True
  return False


def warn_about_composition(transform: str) -> None:
  """Warns (once per transform and kind) if the caller's optax frames show a transform before
  ``transform`` in a chain, or ``optax.MultiSteps`` around or after it."""
  try:
    multi_steps = _multi_steps_type()
    frame = sys._getframe(2)
    while frame is not None:
      local = frame.f_locals
      code = frame.f_code
      if code.co_name == "update_fn" and "update_fns" in local and "fn" in local:
        functions = list(local["update_fns"])
        current = local["fn"]
        position = next((i for i, f in enumerate(functions) if f is current), None)
        if position:
          _warn_once(transform, "before", (
              f"{transform} is not the first transform of its optax.chain: what comes before it "
              f"changes only the direction of eps, since its update is a gradient it computes "
              f"from the objective. Put clipping or scaling after it."))
        if position is not None and multi_steps is not None and any(
            _belongs_to(f, multi_steps) for f in functions[position + 1:]):
          _warn_once(transform, "multisteps", (
              f"{transform} is followed by optax.MultiSteps: its step count advances once per "
              f"micro-batch, so rho schedules, SANER's warmup_steps, LookSAM's k and AE-SAM's "
              f"total_steps count micro-batches."))
      if multi_steps is not None and isinstance(local.get("self"), multi_steps):
        _warn_once(transform, "multisteps", (
            f"{transform} is inside optax.MultiSteps: it runs on every micro-batch with the "
            f"gradient accumulated so far but the objective of that micro-batch only, and its "
            f"state (the step count) advances once per accumulation. Put it before MultiSteps "
            f"in the chain to perturb with each micro-batch's own gradient."))
      frame = frame.f_back
  except Exception:
    return
