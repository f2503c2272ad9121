"""Learned models (CNNIQA, whole-image CNN): saving, loading, the registry, patches, training."""

import json

import pytest
import torch
from scipy.stats import spearmanr

from iqa_adapter.metrics import create_metric, metric_info
from iqa_adapter.metrics.learned import (
    LearnedMetric,
    LearnedModel,
    LearnedModelConfig,
    fit,
    local_contrast_normalise,
    patch_grid,
)


def brightness_data(count=384, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, 32, 32, generator=generator) * torch.rand(count, 1, 1, 1, generator=generator)
    return images, images.mean(dim=(1, 2, 3)) * 100


@pytest.mark.parametrize("architecture", ["cnniqa", "global_cnn"])
def test_a_saved_model_loads_through_the_registry_with_the_same_scores(architecture, tmp_path):
    torch.manual_seed(0)
    model = LearnedModel(
        LearnedModelConfig(
            architecture, score_mean=40.0, score_std=10.0, score_range=(0, 100), description="test model"
        )
    ).eval()
    model.save_pretrained(tmp_path / "model")
    images = torch.rand(3, 3, 40, 56)
    metric = create_metric(f"learned:{tmp_path / 'model'}")
    assert isinstance(metric, LearnedMetric) and metric.differentiable and metric.higher_is_better
    with torch.no_grad():
        assert torch.allclose(metric.score(images), model(images))
    info = metric_info(f"learned:{tmp_path / 'model'}")
    assert info.description == "test model" and info.score_range == (0, 100)
    assert set(metric.features(images)) == {"pooled", "hidden"}
    pixels = images.clone().requires_grad_(True)
    metric.score_with_grad(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_cnniqa_averages_its_patches(tmp_path):
    torch.manual_seed(0)
    model = LearnedModel(LearnedModelConfig("cnniqa", patch_size=16)).eval()
    images = torch.rand(2, 3, 40, 24)
    patches = patch_grid(images, 16)  # rows start at 0, 16, 24; columns at 0, 8
    assert patches.shape == (2, 6, 3, 16, 16)
    covered = torch.zeros(40, 24)
    for top in (0, 16, 24):
        for left in (0, 8):
            covered[top : top + 16, left : left + 16] = 1
    assert covered.all()
    with torch.no_grad():
        one_by_one = torch.stack([model(patches[:, k]) for k in range(6)], dim=1).mean(dim=1)
        assert torch.allclose(model(images), one_by_one, atol=1e-5)
        assert patch_grid(torch.rand(1, 3, 8, 12), 16).shape == (1, 2, 3, 16, 16)  # upscaled to the patch size


def test_local_contrast_normalisation_removes_flat_regions():
    flat = torch.full((1, 3, 16, 16), 0.7)
    assert local_contrast_normalise(flat).abs().max() < 1e-4
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1
    assert local_contrast_normalise(edge).abs().max() > 0.5


@pytest.mark.parametrize("architecture", ["cnniqa", "global_cnn"])
def test_fit_learns_a_simple_score(architecture):
    images, targets = brightness_data()
    torch.manual_seed(0)
    model = LearnedModel(
        LearnedModelConfig(architecture, score_mean=float(targets.mean()), score_std=float(targets.std()))
    )
    losses = fit(model, images[:320], targets[:320], epochs=8, batch_size=32, seed=0)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        predicted = model(images[320:])
    assert spearmanr(predicted, targets[320:])[0] > 0.9


def test_fit_trains_a_classifier():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(2, (256,), generator=generator)
    images = torch.rand(256, 3, 32, 32, generator=generator) * 0.5 + labels[:, None, None, None] * 0.5
    torch.manual_seed(0)
    model = LearnedModel(LearnedModelConfig("global_cnn", task="classify", classes=("dark", "light")))
    fit(model, images[:192], labels[:192], epochs=4, batch_size=32)
    with torch.no_grad():
        assert (model(images[192:]).argmax(dim=1) == labels[192:]).float().mean() > 0.9


def test_bad_folders_and_configs_are_named(tmp_path):
    classifier = LearnedModel(LearnedModelConfig("global_cnn", task="classify", classes=("a", "b")))
    classifier.save_pretrained(tmp_path / "classifier")
    with pytest.raises(ValueError, match="holds a classifier"):
        create_metric(f"learned:{tmp_path / 'classifier'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_metric(f"learned:{tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match="architecture must be one of cnniqa, global_cnn"):
        LearnedModelConfig("resnet")
    config = json.loads((tmp_path / "classifier" / "config.json").read_text())
    (tmp_path / "classifier" / "config.json").write_text(json.dumps({**config, "channels": [8, 8, 8]}))
    with pytest.raises(ValueError, match="do not fit its config.json"):
        LearnedModel.from_pretrained(tmp_path / "classifier")
    (tmp_path / "classifier" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match="torch pickle"):
        LearnedModel.from_pretrained(tmp_path / "classifier")


def test_cnniqa_scores_a_large_image_in_bounded_passes():
    torch.manual_seed(0)
    model = LearnedModel(LearnedModelConfig("cnniqa", patch_size=16)).eval()
    image = torch.rand(1, 3, 16 * 12, 16 * 11)  # 132 patches: three passes of at most 64
    with torch.no_grad():
        assert torch.allclose(model(image), model(patch_grid(image, 16)[0]).mean(), atol=1e-5)
