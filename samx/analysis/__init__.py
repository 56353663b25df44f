"""Tools to study why SAM works, each a pure function usable inside ``jax.jit``."""

from samx.analysis._logit_weights import SplitSummary, logit_weights, split_by_mask
from samx.analysis._probes import linear_probe_accuracy
from samx.analysis._saner_groups import GroupSplit, saner_group_split
from samx.analysis._sharpness import hessian_top_eigenvalue, m_sharpness

__all__ = [
    "GroupSplit",
    "SplitSummary",
    "hessian_top_eigenvalue",
    "linear_probe_accuracy",
    "logit_weights",
    "m_sharpness",
    "saner_group_split",
    "split_by_mask",
]
