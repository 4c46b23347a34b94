"""Pruning: criteria that score weights, unstructured masks, structured removal, schedules."""

from deepcomp.prune.calibrate import collect_activation_norms, collect_gradients  # noqa: F401
from deepcomp.prune.criteria import (  # noqa: F401
    Criterion,
    Magnitude,
    RelevanceCriterion,
    UnitNorm,
    WandaCriterion,
)
from deepcomp.prune.schedule import (  # noqa: F401
    AdaptivePruner,
    iterative_prune,
    iterative_schedule,
    mean_column_norm_amounts,
    pq_index,
    sap_amounts,
)
from deepcomp.prune.structured import (  # noqa: F401
    BNScale,
    ChannelCriterion,
    ChannelGroup,
    ChannelPlan,
    FilterL1,
    FilterL2,
    SlimmingRegularizer,
    Slot,
    SummedWeightScores,
    apply_channel_plan,
    find_channel_groups,
    plan_channel_pruning,
    prune_channels,
    slim,
    slimming_step,
)
from deepcomp.prune.unstructured import (  # noqa: F401
    apply_masks,
    compute_masks,
    layer_kind,
    prunable_layers,
    prune,
    sparsity_report,
)
