"""Pruning: criteria that score weights, unstructured masks, structured removal, schedules."""

from deepcomp.prune.calibrate import collect_activation_norms, collect_gradients  # noqa: F401
from deepcomp.prune.criteria import (  # noqa: F401
    Criterion,
    Magnitude,
    RelevanceCriterion,
    UnitNorm,
    WandaCriterion,
)
from deepcomp.prune.unstructured import (  # noqa: F401
    apply_masks,
    compute_masks,
    layer_kind,
    prunable_layers,
    prune,
    sparsity_report,
)
