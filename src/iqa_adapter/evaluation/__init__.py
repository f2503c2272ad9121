"""The paper's evaluation of IQA-Adapters.

* :mod:`.quality`: the quality experiments (percentile sweep, RelGain, adapter-scale sweep, negative guidance).
"""

from .quality import EvaluationSettings, evaluate_adapter, oriented_spearman, relgain, report_markdown, score_images

__all__ = ["EvaluationSettings", "evaluate_adapter", "oriented_spearman", "relgain", "report_markdown", "score_images"]
