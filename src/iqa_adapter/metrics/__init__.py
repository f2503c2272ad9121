"""Quality metrics: one registry of IQA/IAA scorers (built-in classical metrics, pyiqa, LoDa)."""

from .base import NotDifferentiableError, QualityMetric, check_images
from .registry import MetricInfo, create_metric, list_metrics, metric_info, register_metric

__all__ = [
    "MetricInfo",
    "NotDifferentiableError",
    "QualityMetric",
    "check_images",
    "create_metric",
    "list_metrics",
    "metric_info",
    "register_metric",
]
