"""The pyiqa backend against a stand-in ``pyiqa`` module (the real one needs torchvision, which cannot load beside the
default CPU torch; tests/test_pyiqa_integration.py checks the backend against the real pyiqa in `make test-pyiqa`).

The stand-in follows pyiqa's documented API: ``create_metric(name, as_loss=False, device=None, **kwargs)``
returning a module with ``lower_better``, ``list_models(metric_mode=...)`` and
``pyiqa.default_model_configs.DEFAULT_CONFIGS``. It records how it was called.
"""

import sys
import types

import pytest
import torch
from torch import nn

from iqa_adapter.metrics import create_metric, list_metrics, metric_info
from iqa_adapter.metrics.base import NotDifferentiableError
from iqa_adapter.metrics.pyiqa_backend import MetricUnavailableError, weights_dir

CONFIGS = {
    "fake_nr": {"metric_mode": "NR", "lower_better": False, "score_range": "~0, ~1"},
    "fake_lower": {"metric_mode": "NR", "lower_better": True, "score_range": "0, 100"},
    "fake_fr": {"metric_mode": "FR", "lower_better": False, "score_range": "0, 1"},
    "needs_weights": {"metric_mode": "NR", "lower_better": False, "score_range": "0, 1"},
    "needs_package": {"metric_mode": "NR", "lower_better": False, "score_range": "0, 1"},
    "no_grad_nr": {"metric_mode": "NR", "lower_better": False, "score_range": "0, 1"},
    "entropy": {"metric_mode": "NR", "score_range": "0, 8"},
}


class FakeNet(nn.Module):
    def __init__(self, name, as_loss, options):
        super().__init__()
        self.name, self.as_loss, self.options = name, as_loss, options
        self.lower_better = CONFIGS[name].get("lower_better", False)
        self.gain = nn.Parameter(torch.tensor(2.0))
        # like pyiqa's InferenceModel off the CPU: the device marker is a plain tensor attribute
        self.dummy_param = torch.empty(0)

    def forward(self, images):
        # pyiqa asserts the range to 1e-6 (outside loss mode)
        assert self.as_loss or (images.min() > -1e-6 and images.max() < 1 + 1e-6), "Input must be normalized"
        scores = (self.gain * images.mean(dim=(1, 2, 3)))[:, None]  # pyiqa returns (N, 1)
        return scores.detach() if self.name == "no_grad_nr" else scores


@pytest.fixture
def fake_pyiqa(monkeypatch):
    module = types.ModuleType("pyiqa")
    module.calls = []

    def create(name, as_loss=False, device=None, **options):
        module.calls.append((name, as_loss, options))
        if name == "needs_weights":
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        if name == "needs_package":
            raise ModuleNotFoundError("No module named 'pkg_resources'")
        return FakeNet(name, as_loss, options).to(device)

    module.create_metric = create
    module.list_models = lambda metric_mode=None: sorted(
        n for n, c in CONFIGS.items() if metric_mode in (None, c["metric_mode"])
    )
    configs = types.ModuleType("pyiqa.default_model_configs")
    configs.DEFAULT_CONFIGS = CONFIGS
    monkeypatch.setitem(sys.modules, "pyiqa", module)
    monkeypatch.setitem(sys.modules, "pyiqa.default_model_configs", configs)
    return module


def test_scores_by_prefixed_and_plain_names(fake_pyiqa):
    images = torch.rand(3, 3, 8, 8)
    for name in ("pyiqa:fake_nr", "fake_nr"):
        metric = create_metric(name)
        assert metric.name == "pyiqa:fake_nr" and metric.higher_is_better and metric.score_range == (0.0, 1.0)
        assert torch.allclose(metric.score(images), 2 * images.mean(dim=(1, 2, 3)))
    lower = metric_info("pyiqa:fake_lower")
    assert not lower.higher_is_better and lower.score_range == (0.0, 100.0)


def test_gradient_mode_uses_loss_model_without_reduction(fake_pyiqa):
    metric = create_metric("pyiqa:fake_nr")
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    scores = metric.score_with_grad(images)
    assert scores.shape == (2,)
    scores.sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 2 / (3 * 8 * 8)))
    # pyiqa treats loss_weight as an element-wise weight tensor (a float fails its asserts): none is passed
    assert fake_pyiqa.calls[-1] == ("fake_nr", True, {"loss_reduction": "none"})


def test_metrics_without_gradients_refuse_gradient_mode(fake_pyiqa):
    assert not metric_info("pyiqa:entropy").differentiable and metric_info("pyiqa:fake_nr").differentiable
    entropy = create_metric("pyiqa:entropy")
    assert not entropy.differentiable and entropy.higher_is_better and entropy.score_range == (0.0, 8.0)
    with pytest.raises(NotDifferentiableError, match="not differentiable"):
        entropy.score_with_grad(torch.rand(1, 3, 8, 8))
    assert all(call[1] is False for call in fake_pyiqa.calls)  # no loss model was built for it
    with pytest.raises(NotDifferentiableError, match="without gradients"):
        create_metric("pyiqa:no_grad_nr").score_with_grad(torch.rand(1, 3, 8, 8, requires_grad=True))


def test_inputs_within_the_interface_tolerance_are_clamped(fake_pyiqa):
    images = torch.full((1, 3, 8, 8), 1.0005)  # check_images accepts 1e-3 over, pyiqa only 1e-6
    assert torch.allclose(create_metric("pyiqa:fake_nr").score(images), torch.tensor([2.0]))


def test_device_marker_moves_with_the_metric(fake_pyiqa):
    metric = create_metric("pyiqa:fake_nr", device="cpu")
    assert "dummy_param" in dict(metric.model.named_buffers())
    metric.to(torch.float64)
    assert metric.model.dummy_param.dtype == torch.float64
    assert metric.score(torch.rand(2, 3, 8, 8)).device == torch.device("cpu")


def test_clear_errors(fake_pyiqa):
    with pytest.raises(ValueError, match="full-reference"):
        create_metric("pyiqa:fake_fr")
    with pytest.raises(KeyError, match="Did you mean fake_nr"):
        create_metric("fake_nx")
    with pytest.raises(MetricUnavailableError, match="place pyiqa's weight file") as error:
        create_metric("needs_weights")
    assert weights_dir() in str(error.value)
    with pytest.raises(MetricUnavailableError, match="needs a package.*pkg_resources"):
        create_metric("pyiqa:needs_package")


def test_listing_includes_pyiqa_no_reference_metrics(fake_pyiqa):
    names = {info.name for info in list_metrics()}
    assert {"pyiqa:fake_nr", "pyiqa:fake_lower"} <= names and "pyiqa:fake_fr" not in names


def test_missing_pyiqa_is_explained_and_core_still_works(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa -> ImportError
    with pytest.raises(MetricUnavailableError, match=r"iqa-adapter\[pyiqa\]"):
        create_metric("pyiqa:topiq_nr")
    assert all(info.backend == "builtin" for info in list_metrics())


def test_unknown_plain_names_without_pyiqa_are_unknown_names(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)
    with pytest.raises(KeyError, match=r"unknown metric 'sharpnes'.*built-in: .*sharpness.*pyiqa is not available"):
        create_metric("sharpnes")
