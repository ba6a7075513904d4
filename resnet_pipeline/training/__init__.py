"""Training: the per-worker loop (torch only), the schedule, checkpoints, and the Ray Train wiring.

`loop`, `schedule`, `checkpoint` and `config` import only torch; `ray_launch` imports Ray and
`driver` MLflow (through `resnet_pipeline.tracking`), both lazily.
"""

from resnet_pipeline.training.checkpoint import CheckpointError, CheckpointManager, load_checkpoint
from resnet_pipeline.training.config import TrainConfig
from resnet_pipeline.training.loop import DataSource, FitResult, evaluate, fit, train_step
from resnet_pipeline.training.schedule import PaperSchedule

__all__ = ["CheckpointError", "CheckpointManager", "DataSource", "FitResult", "PaperSchedule", "TrainConfig",
           "evaluate", "fit", "load_checkpoint", "train_step"]
