"""The generic training loop. A task object supplies forward/loss (and evaluation); the loop owns
optimisation, precision, accumulation, distribution, checkpoints and feedback."""

from .config import TrainConfig
from .loop import Task, TrainingError, TrainResult, train

__all__ = ["Task", "TrainConfig", "TrainResult", "TrainingError", "train"]
