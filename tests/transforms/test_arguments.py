"""Bad transform arguments raise an ArgumentError, a ValueError that names the argument."""

import pickle

import pytest

import samx
from samx.transforms import ArgumentError

BAD_ARGUMENTS = [
    (samx.sam, {"rho": -0.1}, "rho"),
    (samx.sam, {"rho": 0.1, "eta": float("inf")}, "eta"),
    (samx.sam, {"rho": 0.1, "adaptive": "yes"}, "adaptive"),
    (samx.sam, {"rho": 0.1, "group_size": 0}, "group_size"),
    (samx.sam, {"rho": 0.1, "groups_in_parallel": 2}, "groups_in_parallel"),
    (samx.sam, {"rho": 0.1, "group_size": 2, "groups_unroll": 0}, "groups_unroll"),
    (samx.sam, {"rho": 0.1, "axis_name": ["batch"]}, "axis_name"),
    (samx.gsam, {"rho": 0.1, "alpha": -0.5}, "alpha"),
    (samx.gsam, {"rho": "0.1", "alpha": 0.5}, "rho"),
    (samx.gsam, {"rho": 0.1, "alpha": 0.5, "group_size": 1.5}, "group_size"),
    (samx.saner, {"rho": 0.1}, "warmup_steps"),
    (samx.saner, {"rho": 0.1, "warmup_steps": -1}, "warmup_steps"),
    (samx.saner, {"rho": 0.1, "warmup_steps": 5, "beta_schedule": lambda t: 0.5},
     "warmup_steps"),
    (samx.saner, {"rho": 0.1, "warmup_steps": 5, "alpha": -0.1}, "alpha"),
    (samx.saner, {"rho": 0.1, "beta_schedule": 0.5}, "beta_schedule"),
    (samx.saner, {"rho": 0.1, "warmup_steps": 5, "gsam_alpha": -1.0}, "gsam_alpha"),
    (samx.saner, {"rho": 0.1, "warmup_steps": 5, "track_groups": 1}, "track_groups"),
    (samx.saner, {"rho": 0.1, "warmup_steps": 5, "eta": -1.0}, "eta"),
    (samx.logit_sam, {"rho": float("nan")}, "rho"),
    (samx.logit_sam, {"rho": 0.1, "adaptive": None}, "adaptive"),
    (samx.jacobian_sam, {"rho": 0.1, "groups_in_parallel": 0, "group_size": 1},
     "groups_in_parallel"),
    (samx.jacobian_sam, {"rho": 0.1, "groups_unroll": 2.5}, "groups_unroll"),
]


@pytest.mark.parametrize(
    ("transform", "kwargs", "argument"), BAD_ARGUMENTS,
    ids=[f"{t.__name__}-{a}-{i}" for i, (t, _, a) in enumerate(BAD_ARGUMENTS)])
def test_bad_argument_raises_an_argument_error_naming_it(transform, kwargs, argument):
  with pytest.raises(ArgumentError) as caught:
    transform(**kwargs)
  assert isinstance(caught.value, ValueError)
  assert caught.value.argument == argument
  assert f"samx.{transform.__name__}: " in str(caught.value)
  assert f"`{argument}`" in str(caught.value)


def test_argument_error_survives_pickling():
  with pytest.raises(ArgumentError) as caught:
    samx.gsam(0.1, -1.0)
  copy = pickle.loads(pickle.dumps(caught.value))
  assert type(copy) is ArgumentError
  assert (copy.argument, str(copy)) == ("alpha", str(caught.value))


def test_gsam_state_is_sam_state():
  assert samx.GSAMState is samx.SAMState
  assert type(samx.gsam(0.1, 0.5).init(0.0)) is samx.SAMState
