"""samx: Sharpness-Aware Minimization as composable optax transforms, and tools to study it."""

from samx import analysis, penalties
from samx.transforms import (
    GroupFractions,
    GSAMState,
    Objective,
    SAMState,
    SANERState,
    gsam,
    jacobian_sam,
    linear_beta_schedule,
    logit_sam,
    sam,
    saner,
)

__version__ = "0.1.0"

__all__ = [
    "GSAMState",
    "GroupFractions",
    "Objective",
    "SAMState",
    "SANERState",
    "analysis",
    "gsam",
    "jacobian_sam",
    "linear_beta_schedule",
    "logit_sam",
    "penalties",
    "sam",
    "saner",
]
