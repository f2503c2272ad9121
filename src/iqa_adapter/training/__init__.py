"""Adapter-only training of IQA-Adapters on frozen SD 1.x/2.x and SDXL bases (``iqa-adapter train``)."""

from .config import TrainConfig
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
