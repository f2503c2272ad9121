"""The interface every quality metric implements."""

from __future__ import annotations

import torch
from torch import nn


class NotDifferentiableError(RuntimeError):
    """Gradients were asked of a metric that has none."""


def check_images(images: torch.Tensor, name: str = "metric") -> torch.Tensor:
    """Validate a batch of RGB images: float tensor (N, 3, H, W) with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"{name}: expected images of shape (N, 3, H, W), got {tuple(images.shape)}; "
            "add a batch dimension with images[None] or convert grey images with .expand(-1, 3, -1, -1)"
        )
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1], got {images.dtype}; divide uint8 images by 255")
    if images.numel():
        low, high = torch.aminmax(images.detach())  # one pass over the batch
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(
                f"{name}: image values must lie in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "images in [-1, 1] convert with (x + 1) / 2"
            )
    return images


class QualityMetric(nn.Module):
    """A no-reference image quality (IQA) or aesthetics (IAA) model.

    Subclasses set the class attributes and implement :meth:`forward`, which maps a batch of RGB images
    (N, 3, H, W), float in [0, 1], of any size from ``min_size`` up, to N scores; any resizing or cropping
    happens inside and is documented by the subclass. Use :meth:`score` for batch scoring (no gradients) and
    :meth:`score_with_grad` for guidance (differentiable metrics only).
    """

    name: str = "metric"
    higher_is_better: bool = True
    score_range: tuple[float, float] = (float("-inf"), float("inf"))  # typical range of the scores
    differentiable: bool = False
    min_size: tuple[int, int] = (1, 1)  # smallest (height, width) the metric can score

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        parameter = next(iter(self.parameters()), None)
        buffer = next(iter(self.buffers()), None)
        tensor = parameter if parameter is not None else buffer
        return tensor.device if tensor is not None else torch.device("cpu")

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,) as float32 on the images' device, without gradients."""
        check_images(images, self.name)
        return self(images).float().reshape(-1)

    def score_with_grad(self, images: torch.Tensor) -> torch.Tensor:
        """Scores (N,) that can be back-propagated to ``images`` (for IQA-gradient guidance)."""
        if not self.differentiable:
            raise NotDifferentiableError(
                f"metric {self.name!r} is not differentiable; choose one whose "
                "`differentiable` flag is set (`iqa-adapter metrics` lists them)"
            )
        check_images(images, self.name)
        with torch.enable_grad():
            return self(images).float().reshape(-1)

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate activations by name (for the reference-based adapter); not every metric has them."""
        raise NotImplementedError(f"metric {self.name!r} does not expose features")

    def extra_repr(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        return (
            f"name={self.name!r}, {direction} is better, range={self.score_range}, differentiable={self.differentiable}"
        )
