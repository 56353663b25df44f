"""Tools to study why SAM works, each a pure function usable inside ``jax.jit``."""

from samx.analysis._logit_weights import SplitSummary, logit_weights, split_by_mask

__all__ = ["SplitSummary", "logit_weights", "split_by_mask"]
