"""samx: Sharpness-Aware Minimization as composable optax transforms, and tools to study it."""

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

__version__ = "0.1.0"

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
