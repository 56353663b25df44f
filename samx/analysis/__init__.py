"""Tools to study why SAM works, each a pure function usable inside ``jax.jit``."""

from samx.analysis._importance import (
    ImportanceWeights,
    gini_coefficient,
    importance_weights,
    lorenz_curve,
    residual_norms,
)
from samx.analysis._logit_weights import SplitSummary, logit_weights, split_by_mask
from samx.analysis._probes import linear_probe_accuracy
from samx.analysis._saner_groups import GroupSplit, saner_group_split
from samx.analysis._sharpness import hessian_top_eigenvalue, m_sharpness

__all__ = [
    "GroupSplit",
    "ImportanceWeights",
    "SplitSummary",
    "gini_coefficient",
    "hessian_top_eigenvalue",
    "importance_weights",
    "linear_probe_accuracy",
    "logit_weights",
    "lorenz_curve",
    "m_sharpness",
    "residual_norms",
    "saner_group_split",
    "split_by_mask",
]
