"""How far the host runs ahead: the window's order and bound, that the training loop and the
evaluation use it, and that with it a long loop of collectives on 8 CPU devices finishes."""

import subprocess
import sys
import textwrap

import pytest

from samx import train
from samx.train import evaluation, loop
from samx.train.in_flight import MAX_IN_FLIGHT, InFlight


class Output:
  """A stand-in for a dispatched array that records when it is waited for."""

  def __init__(self, index: int, waited: list[int]):
    self.index, self.waited = index, waited

  def block_until_ready(self):
    self.waited.append(self.index)
    return self


def test_waits_for_the_oldest_once_more_than_limit_are_pending():
  waited: list[int] = []
  in_flight = InFlight(limit=2)
  pending = []
  for index in range(7):
    in_flight.add({"metrics": Output(index, waited)})
    pending.append(in_flight.pending)
  # one pending until two completions are timed (they take microseconds), then the limit
  assert pending == [1, 1, 1, 2, 2, 2, 2]
  assert waited == [0, 1, 2, 3, 4]  # all but the two newest, oldest first


def test_long_computations_keep_the_host_about_lead_seconds_ahead():
  waited: list[int] = []
  now = [0.0]

  def clock():  # each computation waited for took 3 s
    now[0] += 3.0
    return now[0]

  in_flight = InFlight(limit=4, lead_seconds=1.0, clock=clock)
  for index in range(8):
    in_flight.add(Output(index, waited))
  assert in_flight.seconds_each == 3.0
  assert in_flight.allowed == 1 and in_flight.pending == 1  # a stop waits for one step, not 4
  in_flight.make_room()  # before the next dispatch: nothing left in flight
  assert in_flight.pending == 0 and waited == list(range(8))
  fast = InFlight(limit=4, lead_seconds=1.0, clock=lambda: (now.__setitem__(0, now[0] + 0.1)
                                                            or now[0]))
  for index in range(8):
    fast.add(Output(index, waited))
  assert fast.allowed == 4 and fast.pending == 4
  with pytest.raises(ValueError, match="lead_seconds must be > 0"):
    InFlight(2, 0.0)


@pytest.mark.parametrize("limit", [0, -1, 2.0, True, None])
def test_rejects_a_limit_that_is_not_a_positive_integer(limit):
  with pytest.raises(ValueError, match="limit must be an integer >= 1"):
    InFlight(limit)


def test_training_and_evaluation_keep_at_most_the_limit_in_flight(monkeypatch):
  windows: list[InFlight] = []

  class RecordingInFlight(InFlight):
    def __init__(self, limit: int = MAX_IN_FLIGHT):
      super().__init__(limit)
      self.added, self.most_pending = 0, 0
      windows.append(self)

    def add(self, outputs):
      self.added += 1
      super().add(outputs)
      self.most_pending = max(self.most_pending, self.pending)

  monkeypatch.setattr(loop, "InFlight", RecordingInFlight)
  monkeypatch.setattr(evaluation, "InFlight", RecordingInFlight)
  config = train.override(train.preset("quickstart"), [
      "data.options.train_size=1024", "data.options.test_size=512", "epochs=2",
      "eval_batch_size=128", "train_eval_examples=256"])
  train.run(config, log=None)
  steps_per_epoch = 1024 // config.batch_size
  # one window for the run's training steps; per evaluation, the test set (4 batches) and the
  # training subset (2)
  assert [w.added for w in windows] == [2 * steps_per_epoch] + [512 // 128, 256 // 128] * 2
  assert max(w.most_pending for w in windows) == MAX_IN_FLIGHT


LONG_LOOP = textwrap.dedent("""
  import os
  from samx.train import virtual_cpu_devices_flags
  os.environ["XLA_FLAGS"] = virtual_cpu_devices_flags(8, collective_timeout_seconds=60)
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from samx.train import InFlight

  mesh = Mesh(np.array(jax.devices()), ("data",))
  assert mesh.size == 8

  @jax.jit
  def step(w, x):  # the mean over the sharded batch is an all-reduce over the 8 devices
    g = jnp.mean(jnp.tanh(x @ w), axis=0)
    return w - 0.01 * g[None, :], jnp.sum(g)

  w = jax.device_put(jnp.ones((16, 16)), NamedSharding(mesh, PartitionSpec()))
  x = jax.device_put(np.ones((64, 16), np.float32), NamedSharding(mesh, PartitionSpec("data")))
  in_flight = InFlight()
  for _ in range(1000):
    w, metric = step(w, x)
    in_flight.add(metric)
  print("finished", float(metric))
""")


def test_a_long_loop_of_collectives_on_eight_cpu_devices_finishes():
  """Without the window this loop dispatches far ahead and XLA's CPU client (jaxlib 0.10)
  hangs in the all-reduce, every time here (XLA then aborts it after the 60 s timeout)."""
  done = subprocess.run([sys.executable, "-c", LONG_LOOP], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "finished" in done.stdout
