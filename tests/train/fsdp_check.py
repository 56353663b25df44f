"""Run with 8 virtual CPU devices (see test_fsdp.py): FSDP in the engine.

Trains one configuration data-parallel (``sharding.fsdp=1``) and fully sharded over 2 and 8
devices, and prints the three histories, each run's per-device bytes of its final state, and
whether every leaf of that state is laid out by the rule. Then saves the 8-way sharded state
and restores it onto the 2-way mesh (orbax), checking values and shardings; and stops a run
with ``fsdp=8`` by SIGTERM at its 5th step (it saves that step) and resumes it with
``fsdp=2``, printing the resumed history.
"""

import json
import os
import pathlib
import sys
import tempfile

import jax
import numpy as np

from samx import train
from samx.train import checkpoints, sharding
from samx.train.trainer import make_trainer

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")


def laid_out_by_the_rule(state, fsdp, min_elements) -> bool:
  for leaf in jax.tree.leaves(state):
    shape = leaf.shape
    want = sharding.fsdp_spec(shape, fsdp, min_elements)
    if not leaf.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(leaf.sharding.mesh, want), len(shape)):
      return False
  return True


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  base = train.override(train.preset(sys.argv[1]), sys.argv[2:])
  out, states = {}, {}
  for fsdp in (1, 2, 8):
    config = train.override(base, [f"sharding.fsdp={fsdp}"])
    result = train.run(config, log=None)
    assert result.summary["devices"] == 8
    states[fsdp] = result.state
    sharded = [leaf for leaf in jax.tree.leaves(result.state.params)
               if len(leaf.sharding.device_set) == 8 and not leaf.sharding.is_fully_replicated]
    out[fsdp] = {
        "history": [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                    for r in result.history],
        "bytes_per_device": sharding.bytes_per_device(result.state),
        "sharded_parameters": len(sharded),
        "by_the_rule": laid_out_by_the_rule(result.state, fsdp, base.sharding.min_elements),
    }
  # A checkpoint of the 8-way sharded state, restored onto the 2-way mesh.
  with tempfile.TemporaryDirectory() as directory:
    store = checkpoints.Checkpoints(directory, keep=1)
    store.save(7, states[8])
    store.close()
    target = make_trainer(train.override(base, ["sharding.fsdp=2"]))
    restored = checkpoints.Checkpoints(directory, keep=1).restore(7, target.init())
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[8]), strict=True):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  out["restored_by_the_rule"] = laid_out_by_the_rule(restored, 2, base.sharding.min_elements)
  with tempfile.TemporaryDirectory() as directory:
    run_dir = pathlib.Path(directory) / "run"
    os.environ["SAMX_SIGNAL_INJECTION"] = "TERM:step:5"
    try:
      train.run(train.override(base, ["sharding.fsdp=8"]), run_dir, resume="auto", log=None)
      raise AssertionError("the run should have been stopped")
    except train.TrainingPreempted as stopped:
      assert stopped.step == 5, stopped.step
    os.environ["SAMX_SIGNAL_INJECTION"] = "TERM:step:0"  # no more signals
    resumed = train.run(train.override(base, ["sharding.fsdp=2"]), run_dir, resume="auto",
                        log=None)
    assert laid_out_by_the_rule(resumed.state, 2, base.sharding.min_elements)
    out["resumed"] = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                      for r in resumed.history]
  print(json.dumps(out))


if __name__ == "__main__":
  main()
