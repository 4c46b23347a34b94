"""Pruning: criteria that score weights, unstructured masks, structured removal, schedules."""

from deepcomp.prune.criteria import Criterion, Magnitude  # noqa: F401
from deepcomp.prune.unstructured import (  # noqa: F401
    apply_masks,
    compute_masks,
    layer_kind,
    prunable_layers,
    prune,
    sparsity_report,
)
