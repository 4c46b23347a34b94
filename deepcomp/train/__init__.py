"""Training for Deep Compression: baselines, masked retraining, evaluation, transfer learning.

Where each piece lives:

- ``distributed``: the torchrun process group, rank queries, rank-0-only logs and progress bars.
- ``masked``: ``MaskGuard(model, masks)`` keeps pruned weights exactly zero under any training loop
  (gradient hooks, plus optimizer step hooks that zero momentum / Adam moments of pruned positions).
- ``loop``: ``train`` and ``run_epochs``, one process or DistributedDataParallel under torchrun.
- ``evaluate``: top-1 / top-5 / loss of a torch module or of a .dcz on deepcomp's runtime.
- ``hooks``: ``make_hooks``, the retraining callbacks ``deepcomp.pipeline.compress`` takes.
- ``transfer``: ``finetune_dcz``, transfer learning from a .dcz file to a new task.

Trained quantization (``CodebookTraining``, the paper's Eq. 3) lives beside k-means in
``deepcomp.quantize``; ``.dcz`` -> torch (``dcz_to_torch``) beside the model loaders in ``deepcomp.zoo``.
"""

from deepcomp.quantize import CodebookTraining, SharedParametrization  # noqa: F401
from deepcomp.train.distributed import (  # noqa: F401
    JsonlLog,
    broadcast_,
    default_device,
    dist_active,
    init_distributed,
    is_main,
    rank,
    shutdown_distributed,
    sync_masks,
    world_size,
)
from deepcomp.train.evaluate import evaluate, load_dcz_for_eval  # noqa: F401
from deepcomp.train.hooks import TrainContext, criterion_from_data, make_hooks  # noqa: F401
from deepcomp.train.loop import TrainConfig, make_optimizer, model_stats, run_epochs, train  # noqa: F401
from deepcomp.train.masked import MaskGuard  # noqa: F401
from deepcomp.train.transfer import finetune_dcz, shared_from_dense  # noqa: F401
from deepcomp.zoo import dcz_to_torch  # noqa: F401
