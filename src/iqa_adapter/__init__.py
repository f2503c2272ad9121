"""Quality-aware image generation: IQA-Adapter for diffusers Stable Diffusion and SDXL pipelines."""

from .adapter import AdapterMismatchError, IQAAdapter
from .config import IQAAdapterConfig
from .stats import MetricStats, QualityTargetError, cc3m_stats, load_stats_table

__version__ = "0.1.0"

__all__ = [
    "AdapterMismatchError",
    "IQAAdapter",
    "IQAAdapterConfig",
    "MetricStats",
    "QualityTargetError",
    "cc3m_stats",
    "load_stats_table",
]
