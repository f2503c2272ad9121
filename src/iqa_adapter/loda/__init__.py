"""LoDa (Xu et al., CVPR 2024): a frozen ViT with local distortion features of a frozen CNN injected by
cross-attention, trained for no-reference image quality assessment; with its training, evaluation
protocol, ablation baselines, synthetic datasets and a quality-metric wrapper (``loda:<checkpoint>``).

Trained checkpoints carry a linear calibration of the raw cosine scores onto the MOS scale of their training
data (:mod:`iqa_adapter.loda.calibration`), which the metric applies by default."""

from .config import LoDaConfig, loda_preset
from .model import LoDa, build_model
from .preprocess import DATASET_PRESETS, Resize

__all__ = ["DATASET_PRESETS", "LoDa", "LoDaConfig", "Resize", "build_model", "loda_preset"]
