"""The pyiqa backend against a stand-in ``pyiqa`` module (the real one cannot import without torchvision).

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
from iqa_adapter.metrics.pyiqa_backend import MetricUnavailableError, weights_dir

CONFIGS = {
    "fake_nr": {"metric_mode": "NR", "lower_better": False, "score_range": "~0, ~1"},
    "fake_lower": {"metric_mode": "NR", "lower_better": True, "score_range": "0, 100"},
    "fake_fr": {"metric_mode": "FR", "lower_better": False, "score_range": "0, 1"},
    "needs_weights": {"metric_mode": "NR", "lower_better": False, "score_range": "0, 1"},
}


class FakeNet(nn.Module):
    def __init__(self, name, as_loss, options):
        super().__init__()
        self.name, self.as_loss, self.options = name, as_loss, options
        self.lower_better = CONFIGS[name]["lower_better"]
        self.gain = nn.Parameter(torch.tensor(2.0))

    def forward(self, images):
        return (self.gain * images.mean(dim=(1, 2, 3)))[:, None]  # pyiqa returns (N, 1)


@pytest.fixture
def fake_pyiqa(monkeypatch):
    module = types.ModuleType("pyiqa")
    module.calls = []

    def create(name, as_loss=False, device=None, **options):
        module.calls.append((name, as_loss, options))
        if name == "needs_weights":
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        return FakeNet(name, as_loss, options).to(device)

    module.create_metric = create
    module.list_models = lambda metric_mode=None: sorted(n for n, c in CONFIGS.items()
                                                       if metric_mode in (None, c["metric_mode"]))
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
    assert fake_pyiqa.calls[-1] == ("fake_nr", True, {"loss_reduction": "none", "loss_weight": 1.0})


def test_clear_errors(fake_pyiqa):
    with pytest.raises(ValueError, match="full-reference"):
        create_metric("pyiqa:fake_fr")
    with pytest.raises(KeyError, match="Did you mean fake_nr"):
        create_metric("fake_nx")
    with pytest.raises(MetricUnavailableError, match="place pyiqa's weight file") as error:
        create_metric("needs_weights")
    assert weights_dir() in str(error.value)


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
