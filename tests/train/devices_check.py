"""Run with 8 virtual CPU devices (see test_distributed.py): trains the same configuration on 1
and on 8 devices and prints both histories as JSON."""

import json
import sys

import jax

from samx import train

TIMING_KEYS = ("epoch_seconds", "images_per_second", "steps_per_second")


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  base = train.override(train.preset(sys.argv[1]), sys.argv[2:])
  out = {}
  for devices in (1, 8):
    config = train.override(base, [f"devices={devices}"])
    result = train.run(config, log=None)
    assert result.summary["devices"] == devices
    out[devices] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.history]
  print(json.dumps(out))


if __name__ == "__main__":
  main()
