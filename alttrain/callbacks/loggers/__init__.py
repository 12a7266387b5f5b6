"""Loggers: the trainer's scalars, sample images, text and final metrics, to each tracker the same way.

Backends: TensorBoard (the default), CSV, MLflow (local file store) and W&B (offline); the last two
import their package only when built. Chosen with the ``logger`` config group (``conf/logger/``).
"""

from alttrain.callbacks.loggers.base import Logger
from alttrain.callbacks.loggers.collector import LogCallback
from alttrain.callbacks.loggers.csv import CSV
from alttrain.callbacks.loggers.mlflow import MLflow
from alttrain.callbacks.loggers.tensorboard import TensorBoard
from alttrain.callbacks.loggers.wandb import WandB

__all__ = ["CSV", "LogCallback", "Logger", "MLflow", "TensorBoard", "WandB"]
