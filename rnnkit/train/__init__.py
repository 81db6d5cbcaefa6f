"""The training engine: one Trainer for every application."""

from rnnkit.train.checkpoint import CheckpointError
from rnnkit.train.config import TrainConfig
from rnnkit.train.data import Batch, OffsetStreams, PhasedBatches, ShuffledBatches, StreamBatches
from rnnkit.train.distributed import DistContext, from_environment
from rnnkit.train.trainer import Task, Trainer, TrainingDiverged, TrainResult

__all__ = [
    "Batch",
    "CheckpointError",
    "DistContext",
    "PhasedBatches",
    "ShuffledBatches",
    "OffsetStreams",
    "StreamBatches",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "from_environment",
]
