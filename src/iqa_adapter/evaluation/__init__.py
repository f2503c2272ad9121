"""The paper's evaluation of IQA-Adapters (``iqa-adapter evaluate``).

* :mod:`.plan`: what is generated (conditions x prompts x seeds);
* :mod:`.passes`: resumable, shareable chunked passes (generation, scoring, other per-image measures);
* :mod:`.quality`: the quality experiments (percentile sweep, RelGain, scale sweep, negative guidance, the RelGain
  matrix of several adapters);
* :mod:`.prompts`: prompt sets (plain text, PartiPrompts, DrawBench, GenEval, COCO captions);
* :mod:`.features`, :mod:`.fidelity`: feature extractors, Frechet distances, CLIP-T and CLIP-I;
* :mod:`.prompt_following`: GenEval's tasks; :mod:`.distances`: distances between quality levels;
* :mod:`.run`: :func:`evaluate`, which runs all of it and writes the report (:mod:`.report`, :mod:`.figures`).
"""

from .quality import oriented_spearman, quality_report, relgain, relgain_matrix
from .run import EvaluationSettings, Measures, evaluate

__all__ = [
    "EvaluationSettings",
    "Measures",
    "evaluate",
    "oriented_spearman",
    "quality_report",
    "relgain",
    "relgain_matrix",
]
