"""The SAM family as optax gradient transformations.

Each transform is three small parts: how the ascent step is chosen (``_perturbation``: SAM,
ASAM), how the gradient at the perturbed point is formed (``_perturbed_gradient``: whole batch
or per group, the groups' layer weights through ``_structured_groups`` and
``_layer_structure``; ``_decomposition``: whole, logit term only, Jacobian only), and how it is
combined with the clean gradient (``_combination``: as is, GSAM, SANER); ``_masks`` says which
leaves an option applies to. ``_looksam`` and ``_ae_sam`` evaluate the second gradient only on
some steps. ``_sharpness_aware`` puts the three together into one optax transform, given the
options all of them share; a bad argument raises :class:`ArgumentError` (``_arguments``), a
``ValueError`` naming the argument.
"""

from samx.transforms._ae_sam import AESAMState, ae_sam
from samx.transforms._arguments import ArgumentError
from samx.transforms._combination import GroupFractions
from samx.transforms._composition import CompositionWarning
from samx.transforms._gsam import GSAMState, gsam
from samx.transforms._logit_jacobian_sam import jacobian_sam, logit_sam
from samx.transforms._looksam import LookSAMState, looksam
from samx.transforms._objective import Objective
from samx.transforms._sam import sam
from samx.transforms._saner import SANERState, linear_beta_schedule, saner, saner_beta_schedule
from samx.transforms._sharpness_aware import SAMState, group_plan
from samx.transforms._structured_groups import GroupPlan, LeafPath

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
    "group_plan",
    "gsam",
    "jacobian_sam",
    "linear_beta_schedule",
    "logit_sam",
    "looksam",
    "sam",
    "saner",
    "saner_beta_schedule",
]
