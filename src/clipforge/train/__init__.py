"""The generic training loop. A task object supplies data, batches, forward and loss; the loop owns
optimisation, precision, accumulation, distribution, checkpoints and feedback."""

from .config import TrainConfig
from .loop import TrainingError, TrainResult, train
from .task import Task

__all__ = ["Task", "TrainConfig", "TrainResult", "TrainingError", "train"]
