"""Checkpoints of the training state with orbax-checkpoint, one per saved epoch."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def manager(run_dir: pathlib.Path, *, keep: int) -> ocp.CheckpointManager:
  """A manager that keeps the ``keep`` latest checkpoints under ``run_dir/checkpoints``.

  Saves are asynchronous (training goes on while the arrays are written) and atomic: a save
  interrupted by a kill leaves no checkpoint, so the latest one is always complete.
  """
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(run_dir).absolute() / CHECKPOINT_DIR,
                               options=options)


def save(checkpoint_manager: ocp.CheckpointManager, epoch: int, state: Any) -> None:
  """Saves ``state`` (any pytree of arrays) as the checkpoint of ``epoch``."""
  checkpoint_manager.save(epoch, args=ocp.args.StandardSave(state))


def restore(checkpoint_manager: ocp.CheckpointManager, epoch: int, like: Any) -> Any:
  """The checkpoint of ``epoch``, with the structure, dtypes and shardings of ``like``."""
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        like)
  return checkpoint_manager.restore(epoch, args=ocp.args.StandardRestore(target))


def latest_epoch(run_dir: pathlib.Path) -> int | None:
  """The epoch of the latest complete checkpoint in ``run_dir`` (``None``: there is none)."""
  directory = pathlib.Path(run_dir).absolute() / CHECKPOINT_DIR
  if not directory.is_dir():
    return None
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False)) as m:
    return m.latest_step()
