"""The toy world's zoo of learned models: targets, data and a miniature training run."""

import dataclasses

import pytest
import torch

from iqa_adapter.metrics import create_metric
from iqa_adapter.toy.scenes import Background, Scene, ToyObject
from iqa_adapter.toy.zoo import CLASSES, RECIPES, composition_score, make_zoo_data, train_zoo_model


def scene(size="large", position="centre", colour="yellow", background="blue", pattern="plain"):
    item = ToyObject("circle", colour, size, position, 0.5, 0.5, 0.22)
    return Scene((item,), Background(pattern, background), "a scene")


def test_composition_prefers_large_centred_contrasting_objects_on_quiet_backgrounds():
    best = composition_score(scene())
    assert 0 < best <= 1
    assert composition_score(scene(size="small")) < best
    assert composition_score(scene(position="top")) < composition_score(scene(position="left")) < best
    assert composition_score(scene(colour="cyan")) < best  # cyan on blue contrasts less than yellow
    assert composition_score(scene(pattern="checked")) < composition_score(scene(pattern="striped")) < best


def test_zoo_data_is_reproducible_and_labelled():
    data = make_zoo_data(seed=5, count=64, clean_fraction=0.25, min_level=0.4)
    again = make_zoo_data(seed=5, count=64, clean_fraction=0.25, min_level=0.4)
    assert torch.equal(data.images, again.images) and torch.equal(data.family, again.family)
    clean = data.family == 0
    assert clean.any() and (~clean).any()
    assert torch.allclose(data.ssim[clean], torch.tensor(100.0)) and (data.level[clean] == 0).all()
    assert (data.level[~clean] >= 0.4).all() and (data.ssim[~clean] < 100).all()
    assert data.images.shape == (64, 3, 32, 32) and ((data.images * 255).round() == data.images * 255).all()
    aesthetic = data.target("aesthetic")
    assert torch.allclose(aesthetic, 50 * data.composition + 0.5 * data.ssim)
    with pytest.raises(ValueError, match="unknown zoo target"):
        data.target("beauty")


def test_a_zoo_model_trains_reports_and_loads_as_a_metric(tmp_path):
    recipe = dataclasses.replace(RECIPES["aesthetic"], images=200, epochs=2)
    report = train_zoo_model("aesthetic", tmp_path / "aesthetic", recipe, progress=False)
    assert {"srcc", "plcc", "krcc", "rmse"} <= set(report["test"]) and report["test"]["images"] == 40
    metric = create_metric(f"learned:{tmp_path / 'aesthetic'}")
    assert metric.score(torch.rand(2, 3, 32, 32)).shape == (2,)
    assert train_zoo_model("aesthetic", tmp_path / "aesthetic", recipe, progress=False) == report  # finished: kept
    with pytest.raises(ValueError, match="another recipe"):
        train_zoo_model("aesthetic", tmp_path / "aesthetic", dataclasses.replace(recipe, epochs=3), progress=False)


def test_the_classifier_learns_distortion_families(tmp_path):
    recipe = dataclasses.replace(
        RECIPES["classifier"], images=1500, epochs=4, generated_images=0, round_trip_fraction=0.0
    )
    report = train_zoo_model("classifier", tmp_path / "classifier", recipe, progress=False)
    assert set(report["test"]["per_class"]) == set(CLASSES)
    assert report["test"]["accuracy"] > 3 / len(CLASSES)  # three times chance after a few seconds of training


def test_the_classifier_can_also_learn_from_base_model_samples_and_vae_round_trips(tmp_path, sd_pipe, monkeypatch):
    from iqa_adapter import pipelines

    redrawn, real_round_trip = [], pipelines.vae_round_trip  # how many scenes went through the VAE

    def round_trip(vae, images):
        redrawn.append(len(images))
        return real_round_trip(vae, images)

    monkeypatch.setattr(pipelines, "vae_round_trip", round_trip)
    recipe = dataclasses.replace(
        RECIPES["classifier"], images=60, epochs=1, generated_images=10, round_trip_fraction=0.5
    )
    report = train_zoo_model("classifier", tmp_path / "classifier", recipe, base_pipeline=sd_pipe, progress=False)
    assert set(report["test"]["parts"]) == {"rendered", "round_trip", "generated"}
    assert report["test"]["images"] == 12 + 2 and 10 <= redrawn[0] <= 50  # about half of the 60 scenes
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="round_trip_fraction must lie in"):
            train_zoo_model("classifier", tmp_path / "other", dataclasses.replace(recipe, round_trip_fraction=fraction))
    for other in (recipe, dataclasses.replace(recipe, generated_images=0)):
        with pytest.raises(ValueError, match="need the base pipeline"):
            train_zoo_model("classifier", tmp_path / "other", other, progress=False)
