"""Structured pruning that really shrinks the model: whole filters / neurons are removed.

Removing output channel c of a Conv2d (or output neuron c of a Linear -- the seeds' "unit pruning")
removes row c of its weight and bias, entry c of every BatchNorm that normalises it, and the input
channel(s) fed by c in every layer that reads it. Channels tied by a residual add are one group and
go together; channels that feed a concat are cut from every layer that reads the concat, at their
offset there. The pruned model is a new module (a deep copy) of the same class with smaller layers;
in eval mode it computes what ``apply_channel_plan(model, plan, mode="zero")`` computes.

- :mod:`.trace`: dependency tracing, the channel groups of a model (torch.fx);
- :mod:`.plan`: channel criteria and the choice of the channels each group keeps;
- :mod:`.surgery`: rebuilding the layers, ``prune_channels``;
- :mod:`.slimming`: network slimming's penalty and pruning step.
"""

from deepcomp.prune.structured.plan import (  # noqa: F401
    BNScale,
    ChannelCriterion,
    ChannelPlan,
    FilterL1,
    FilterL2,
    NoScore,
    SummedWeightScores,
    plan_channel_pruning,
)
from deepcomp.prune.structured.slimming import SlimmingRegularizer, slim, slimming_step  # noqa: F401
from deepcomp.prune.structured.surgery import apply_channel_plan, prune_channels  # noqa: F401
from deepcomp.prune.structured.trace import ChannelGroup, Slot, find_channel_groups  # noqa: F401
