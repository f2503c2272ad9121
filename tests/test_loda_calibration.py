"""Calibrated LoDa scores: the least-squares map a * raw + b fitted on the training split after training."""

import json
import logging

import numpy as np
import pytest
import torch
from scipy import stats

from iqa_adapter.cli import main
from iqa_adapter.loda import build_model, loda_preset
from iqa_adapter.loda.calibration import Calibration, fit_calibration, raw_table_scores, read_calibration
from iqa_adapter.loda.data import random_splits, read_meta
from iqa_adapter.loda.metric import LoDaMetric
from iqa_adapter.loda.synthetic import make_dataset
from iqa_adapter.loda.train import TrainSettings, train
from iqa_adapter.metrics import create_metric, metric_info

FAMILIES = ("gaussian_noise", "gaussian_blur", "contrast")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """48 images of 32 px (one crop each) and 40 px (several crop positions): 4 references x 3 families x 4."""
    meta = make_dataset(
        tmp_path_factory.mktemp("calibration_data"), num_references=4, size=40, families=FAMILIES, levels=4
    )
    return read_meta(meta)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A tiny LoDa trained on 3 of the 4 references; (checkpoint dir, model, train rows)."""
    split = random_splits(len(dataset), dataset.refs, num_splits=1, train_fraction=0.75, seed=0)[0]
    settings = TrainSettings(
        epochs=10, batch_size=12, lr=2e-3, crops_per_image=1, seed=0, log_every=0, calibration_crops=4
    )
    out = tmp_path_factory.mktemp("calibrated")
    model = train(loda_preset("tiny"), dataset, split["train"], settings, out)
    return out, model, split["train"]


def test_fit_calibration_is_the_least_squares_line(caplog):
    raw = np.array([-0.5, -0.1, 0.2, 0.4, 0.9])
    mos = 30 * raw + 50 + np.array([1.0, -2.0, 0.5, 0.0, 0.5])
    calibration = fit_calibration(raw, mos, crops=3)
    slope, intercept = np.polyfit(raw, mos, 1)
    assert calibration.a == pytest.approx(slope) and calibration.b == pytest.approx(intercept)
    assert (calibration.mos_min, calibration.mos_max) == (mos.min(), mos.max()) == calibration.score_range
    assert calibration.samples == 5 and calibration.crops == 3
    assert calibration.rmse == pytest.approx(np.sqrt(np.mean((slope * raw + intercept - mos) ** 2)))
    assert calibration.raw_bounds == pytest.approx((intercept - slope, intercept + slope))
    torch.testing.assert_close(
        calibration.apply(torch.tensor([0.0, 1.0], dtype=torch.float64)),
        torch.tensor([intercept, intercept + slope], dtype=torch.float64),
    )
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration
    with caplog.at_level(logging.WARNING, logger="iqa_adapter.loda"):
        flat = fit_calibration(np.full(4, 0.3), np.array([1.0, 2.0, 3.0, 4.0]))
        assert flat.a == 0 and flat.b == 2.5 and "constant" in caplog.text
        reversed_ = fit_calibration(raw, -mos)
        assert reversed_.a < 0 and "reversed" in caplog.text
    assert json.loads(json.dumps(flat.to_dict()))["plcc"] is None  # NaN is stored as null
    with pytest.raises(ValueError, match="at least 2"):
        fit_calibration([0.1], [3.0])


def test_training_stores_a_calibration_fitted_on_the_training_split(dataset, trained):
    out, model, rows = trained
    meta = json.loads((out / "config.json").read_text())
    calibration = read_calibration(meta)
    assert calibration is not None and calibration.samples == len(rows) and calibration.crops == 4
    train_mos = dataset.mos[rows]
    assert calibration.score_range == (train_mos.min(), train_mos.max()) != (dataset.mos.min(), dataset.mos.max())
    # the line through the raw scores of the training images, by hand
    raw = raw_table_scores(model, dataset, rows, crops=4)
    slope, intercept = np.polyfit(raw, train_mos, 1)
    assert calibration.a == pytest.approx(slope, rel=1e-5) and calibration.b == pytest.approx(intercept, rel=1e-5)
    assert calibration.a > 0  # trained: the raw scores follow the MOS

    # the metric gives a * raw + b by default, raw with calibrated=False; same ranking, gradients scaled by a
    calibrated, plain = create_metric(f"loda:{out}", crops=4), create_metric(f"loda:{out}", crops=4, calibrated=False)
    assert calibrated.score_range == calibration.score_range and plain.score_range == (-1.0, 1.0)
    images = torch.rand(5, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    raw_scores = plain.score(images)
    torch.testing.assert_close(calibrated.score(images), raw_scores * calibration.a + calibration.b)
    assert stats.spearmanr(calibrated.score(images), raw_scores)[0] == pytest.approx(1.0)
    pixels = images.clone().requires_grad_(True)
    calibrated.score_with_grad(pixels).sum().backward()
    raw_pixels = images.clone().requires_grad_(True)
    plain.score_with_grad(raw_pixels).sum().backward()
    torch.testing.assert_close(pixels.grad, raw_pixels.grad * calibration.a)
    # calibrated scores of the training images, as the metric gives them, fit the training MOS
    from iqa_adapter.loda.data import load_image

    train_images = torch.stack([load_image(dataset.paths[row]) for row in rows])
    fitted = calibrated.score(train_images).double().numpy()
    assert np.sqrt(np.mean((fitted - train_mos) ** 2)) == pytest.approx(calibration.rmse, rel=1e-4)

    info = metric_info(f"loda:{out}")
    assert info.score_range == calibration.score_range and "calibrated" in info.description
    assert "calibrated" in repr(calibrated)


def test_duplicate_crop_positions_are_scored_once(trained):
    out, model, _ = trained
    metric = create_metric(f"loda:{out}", calibrated=False)  # 15 uniform crops, all at (0, 0) on 32 px images
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    calls = []
    hook = metric.model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    scores = metric.score(images)
    hook.remove()
    assert calls == [3]
    torch.testing.assert_close(scores, model(images).detach())
    features = metric.features(images)
    torch.testing.assert_close(features["cls"], model.forward_features(images)["cls"].detach())


def test_checkpoints_without_calibration_give_raw_scores(dataset, tmp_path):
    old = tmp_path / "old"
    build_model(loda_preset("tiny"), seed=3).save_pretrained(old)  # as checkpoints were written before
    assert read_calibration(json.loads((old / "config.json").read_text())) is None
    metric = create_metric(f"loda:{old}")
    assert metric.calibration is None and metric.score_range == (-1.0, 1.0)
    assert metric_info(f"loda:{old}").score_range == (-1.0, 1.0)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(metric.score(images), create_metric(f"loda:{old}", calibrated=False).score(images))
    assert (metric.score(images).abs() <= 1).all()
    # training with calibration_crops=0 writes no calibration
    settings = TrainSettings(epochs=1, batch_size=12, crops_per_image=1, seed=0, log_every=0, calibration_crops=0)
    train(loda_preset("tiny"), dataset, list(range(24)), settings, tmp_path / "uncalibrated")
    assert "calibration" not in json.loads((tmp_path / "uncalibrated" / "config.json").read_text())
    assert isinstance(create_metric(f"loda:{tmp_path / 'uncalibrated'}"), LoDaMetric)


def test_paused_runs_are_calibrated_when_they_finish(dataset, tmp_path):
    rows = list(range(24))
    paused = TrainSettings(
        epochs=2, batch_size=12, crops_per_image=1, seed=0, log_every=0, max_iterations=2, calibration_crops=2
    )
    train(loda_preset("tiny"), dataset, rows, paused, tmp_path)
    assert "calibration" not in json.loads((tmp_path / "config.json").read_text())
    finish = TrainSettings(**{**paused.__dict__, "max_iterations": None})
    train(loda_preset("tiny"), dataset, rows, finish, tmp_path, resume=True)
    first = json.loads((tmp_path / "config.json").read_text())["calibration"]
    assert first["samples"] == 24
    train(loda_preset("tiny"), dataset, rows, finish, tmp_path, resume=True)  # finished: only recalibrates
    assert json.loads((tmp_path / "config.json").read_text())["calibration"] == first


def test_command_line_reports_the_calibration(dataset, tmp_path, capsys):
    common = [
        "--meta",
        str(dataset.source),
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--crops-per-image",
        "1",
        "--test-crops",
        "2",
        "--log-every",
        "0",
        "--calibration-crops",
        "2",
    ]
    assert main(["loda", "train", *common, "--random-split", "0", "--out", str(tmp_path / "run")]) == 0
    assert "scores: calibrated" in capsys.readouterr().out
    assert main(["loda", "info", "--checkpoint", str(tmp_path / "run")]) == 0
    assert "scores: calibrated" in capsys.readouterr().out
