"""samx: Sharpness-Aware Minimization as composable optax transforms, and tools to study it.

The transforms are at the top level (``samx.sam``, ``samx.saner``, ...), with
``samx.penalties`` and ``samx.analysis``; ``samx.models``, ``samx.data`` and ``samx.train`` are
imported the first time they are used (``import samx`` then ``samx.models.resnet18(...)``), so
that ``import samx`` stays as light as the transforms.
"""

import importlib
import importlib.metadata
from typing import Any

from samx import analysis, penalties
from samx.transforms import (
    AESAMState,
    ArgumentError,
    CompositionWarning,
    GroupFractions,
    GroupPlan,
    GSAMState,
    LeafPath,
    LookSAMState,
    Objective,
    SAMState,
    SANERState,
    ae_sam,
    group_plan,
    gsam,
    jacobian_sam,
    linear_beta_schedule,
    logit_sam,
    looksam,
    sam,
    saner,
    saner_beta_schedule,
)

# The one version: pyproject.toml's, read from the installed package's metadata.
__version__ = importlib.metadata.version("samx")

# Subpackages imported on first use.
_LAZY_SUBPACKAGES = ("data", "models", "train")


def __getattr__(name: str) -> Any:
  if name in _LAZY_SUBPACKAGES:
    return importlib.import_module(f"samx.{name}")
  raise AttributeError(f"module 'samx' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([*globals(), *_LAZY_SUBPACKAGES])

__all__ = [
    "AESAMState",
    "ArgumentError",
    "CompositionWarning",
    "GSAMState",
    "GroupFractions",
    "GroupPlan",
    "LeafPath",
    "LookSAMState",
    "Objective",
    "SAMState",
    "SANERState",
    "ae_sam",
    "analysis",
    "group_plan",
    "gsam",
    "jacobian_sam",
    "linear_beta_schedule",
    "logit_sam",
    "looksam",
    "penalties",
    "sam",
    "saner",
    "saner_beta_schedule",
]
