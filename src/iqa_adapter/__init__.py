"""Quality-aware image generation: IQA-Adapter for diffusers Stable Diffusion and SDXL pipelines."""

import logging as _logging


class _DropTorchvisionFallbackNotices(_logging.Filter):
    """Importing diffusers makes transformers announce that image processors (CLIP, SigLIP) fall back to
    their PIL versions when torchvision is absent, as it is for this package's core. Nothing here uses those
    processors, so the notices are dropped; every other transformers message is kept."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


_logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallbackNotices())

from .adapter import AdapterMismatchError, IQAAdapter
from .config import IQAAdapterConfig
from .stats import MetricStats, QualityTargetError, QualityTargetWarning, cc3m_stats, load_stats_table

__version__ = "0.1.0"

__all__ = [
    "AdapterMismatchError",
    "IQAAdapter",
    "IQAAdapterConfig",
    "MetricStats",
    "QualityTargetError",
    "QualityTargetWarning",
    "cc3m_stats",
    "load_stats_table",
]
