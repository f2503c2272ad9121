"""Training, resuming, the split protocol, the registry metric and the command line, on tiny synthetic data."""

import json
import pickle

import pandas as pd
import pytest
import torch

from iqa_adapter.cli import main
from iqa_adapter.loda import build_model, loda_preset
from iqa_adapter.loda import train as train_module
from iqa_adapter.loda.calibration import raw_table_scores
from iqa_adapter.loda.data import load_image, random_splits, read_meta
from iqa_adapter.loda.evaluate import correlation_metrics, predict
from iqa_adapter.loda.metric import LoDaMetric
from iqa_adapter.loda.preprocess import Resize
from iqa_adapter.loda.protocol import run_protocol
from iqa_adapter.loda.synthetic import make_dataset
from iqa_adapter.loda.train import STATE_FILE, RunDirectoryError, TrainSettings, train
from iqa_adapter.metrics import create_metric, metric_info

FAMILIES = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg", "brightness")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """80 images of 40 px: 4 clean images x 5 families x 4 levels, pseudo-MOS = 100 SSIM."""
    meta = make_dataset(tmp_path_factory.mktemp("synthetic"), num_references=4, size=40, families=FAMILIES, levels=4)
    return read_meta(meta)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A tiny LoDa trained for 150 iterations on all 80 images; (checkpoint dir, model, settings)."""
    settings = TrainSettings(epochs=30, batch_size=16, lr=2e-3, crops_per_image=1, seed=0, log_every=0)
    out = tmp_path_factory.mktemp("trained")
    model = train(loda_preset("tiny"), dataset, list(range(len(dataset))), settings, out)
    return out, model, settings


def test_synthetic_dataset(dataset):
    frame = dataset.frame
    assert len(dataset) == 80 and set(frame["family"]) == set(FAMILIES) and dataset.refs is not None
    assert all(path.is_file() for path in dataset.paths)
    assert frame["mos"].between(-100, 100).all() and frame["mos"].std() > 5
    for _, group in frame.groupby(["ref_name", "family"]):  # stronger levels score lower
        assert group.sort_values("level")["mos"].is_monotonic_decreasing


def test_training_beats_the_initial_model(dataset, trained):
    out, model, settings = trained
    rows = list(range(len(dataset)))
    initial = build_model(loda_preset("tiny"), seed=settings.seed)  # the weights training started from
    before = correlation_metrics(predict(initial, dataset, rows, crops=4, crop_mode="uniform"), dataset.mos)
    after = correlation_metrics(predict(model, dataset, rows, crops=4, crop_mode="uniform"), dataset.mos)
    assert after["srcc"] > before["srcc"] + 0.15 and after["srcc"] > 0.35, (before, after)
    saved = json.loads((out / "config.json").read_text())
    assert saved["training"]["iteration"] == saved["training"]["iterations_total"] == 150


def _trained_state(out_dir):
    from safetensors.torch import load_file

    return load_file(out_dir / "loda.safetensors")


def test_resume_after_a_pause_or_a_crash_matches_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    rows = list(range(0, 80, 2))
    settings = TrainSettings(epochs=2, batch_size=8, crops_per_image=2, seed=1, log_every=0)  # 10 iterations
    train(loda_preset("tiny"), dataset, rows, settings, tmp_path / "straight")
    reference = _trained_state(tmp_path / "straight")

    paused = TrainSettings(**{**settings.__dict__, "max_iterations": 7})
    train(loda_preset("tiny"), dataset, rows, paused, tmp_path / "paused")
    assert json.loads((tmp_path / "paused" / "config.json").read_text())["training"]["iteration"] == 7
    train(loda_preset("tiny"), dataset, rows, settings, tmp_path / "paused", resume=True)

    calls = {"n": 0}
    real_loss = train_module.norm_in_norm_loss

    def crashing_loss(*args):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated kill")
        return real_loss(*args)

    monkeypatch.setattr(train_module, "norm_in_norm_loss", crashing_loss)
    crashing = TrainSettings(**{**settings.__dict__, "save_every": 5})
    with pytest.raises(KeyboardInterrupt):
        train(loda_preset("tiny"), dataset, rows, crashing, tmp_path / "crashed")
    monkeypatch.setattr(train_module, "norm_in_norm_loss", real_loss)
    assert json.loads((tmp_path / "crashed" / "config.json").read_text())["training"]["iteration"] == 5
    train(loda_preset("tiny"), dataset, rows, crashing, tmp_path / "crashed", resume=True)

    for run in ("paused", "crashed"):
        state = _trained_state(tmp_path / run)
        assert set(state) == set(reference)
        for name, tensor in reference.items():
            torch.testing.assert_close(state[name], tensor, atol=1e-6, rtol=1e-5, msg=f"{run}: {name}")
    assert not torch.equal(reference["head.weight"], build_model(loda_preset("tiny"), seed=1).head.weight)

    with pytest.raises(RunDirectoryError, match="--resume"):
        train(loda_preset("tiny"), dataset, rows, settings, tmp_path / "straight")
    other = TrainSettings(**{**settings.__dict__, "lr": 1e-3})
    with pytest.raises(RunDirectoryError, match="recipe"):
        train(loda_preset("tiny"), dataset, rows, other, tmp_path / "straight", resume=True)
    assert (tmp_path / "straight" / STATE_FILE).is_file()


def test_protocol_trains_every_variant_on_every_split(dataset, tmp_path):
    splits = random_splits(len(dataset), dataset.refs, num_splits=2, seed=0)
    settings = TrainSettings(epochs=1, batch_size=16, crops_per_image=1, seed=0, log_every=0)
    configs = {v: loda_preset("tiny", variant=v) for v in ("loda", "linear_probe", "full_finetune", "add_tokens")}
    results = run_protocol(dataset, splits, configs, settings, tmp_path, test_crops=2)
    assert set(results) == set(configs)
    for name, result in results.items():
        assert len(result["runs"]) == 2 and set(result["summary"]) == {"srcc", "plcc", "krcc", "rmse"}
        saved = json.loads((tmp_path / name / "split_1" / "test_predictions.json").read_text())
        assert saved["rows"] == splits[1]["test"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["splits"] == 2 and set(summary["results"]) == set(configs)
    # finished runs are not trained again
    (tmp_path / "loda" / "split_0" / STATE_FILE).unlink()
    assert (
        run_protocol(dataset, splits, {"loda": configs["loda"]}, settings, tmp_path, test_crops=2)["loda"]["runs"]
        == results["loda"]["runs"]
    )
    # cross-dataset: test on all rows of another table
    cross = run_protocol(
        dataset, splits[:1], {"loda": configs["loda"]}, settings, tmp_path / "cross", test_table=dataset, test_crops=2
    )
    tested = json.loads((tmp_path / "cross" / "loda" / "split_0" / "test_predictions.json").read_text())
    assert len(tested["rows"]) == 80
    assert cross["loda"]["summary"]["srcc"]["runs"] == 1


def test_registry_metric_scores_any_size_with_gradients_and_features(trained):
    out, model, _ = trained
    metric = create_metric(f"loda:{out}", crops=4, calibrated=False)  # raw cosine scores
    assert isinstance(metric, LoDaMetric) and metric.name == "loda" and metric.differentiable
    assert metric.higher_is_better and metric_info(f"loda:{out}").differentiable
    images = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    scores = metric.score(images)
    assert scores.shape == (3,) and (scores.abs() <= 1).all()
    alone = torch.stack([metric.score(image[None])[0] for image in images])
    torch.testing.assert_close(scores, alone)
    assert metric.score(torch.rand(2, 3, 20, 24)).shape == (2,)  # smaller than a crop: upscaled
    # one crop of an image of exactly the crop size is the network's own score
    one = create_metric(f"loda:{out}", crops=1, calibrated=False)
    crop = images[:, :, :32, :32]
    torch.testing.assert_close(one.score(crop), model(crop).detach())
    # gradients reach the images, not the weights
    pixels = images.clone().requires_grad_(True)
    metric.score_with_grad(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.parameters())
    metric.train()
    assert not metric.model.training and torch.equal(metric.score(images), scores)
    features = metric.features(images)
    assert features["cls"].shape == (3, 32) and features["distortion_tokens"].shape == (3, 64, 16)
    assert features["injected.0"].shape == (3, 65, 32) and "injected.1" in features
    assert set(metric.features(images, blocks=[1])) == {"cls", "distortion_tokens", "injected.1"}
    with pytest.raises(ValueError, match="not a LoDa checkpoint"):
        create_metric(f"loda:{out}/missing")


def test_the_resize_is_part_of_the_run_and_of_the_checkpoint(dataset, tmp_path):
    rows = list(range(0, 80, 4))
    settings = TrainSettings(
        epochs=1,
        batch_size=8,
        crops_per_image=2,
        seed=1,
        log_every=0,
        max_iterations=1,
        calibration_crops=0,
        dataset_preset="kadid10k",
    )
    resized = loda_preset("tiny", resize=Resize(short_side=36))
    train(resized, dataset, rows, settings, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["resize"] == {"short_side": 36, "size": None, "interpolation": "bicubic"}
    assert saved["training"]["dataset_preset"] == "kadid10k"
    assert saved["training"]["preprocessing"].startswith(
        "shorter side to 36 px (bicubic), then 2 random 32 px "
        "training crops per image (changed from the official kadid10k"
    )
    for other in (loda_preset("tiny"), loda_preset("tiny", resize=Resize(short_side=36, interpolation="bilinear"))):
        with pytest.raises(RunDirectoryError, match="holds a run with other config"):
            train(other, dataset, rows, settings, tmp_path / "run", resume=True)
    train(
        resized,
        dataset,
        rows,
        TrainSettings(**{**settings.__dict__, "max_iterations": None}),
        tmp_path / "run",
        resume=True,
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["iteration"] == 5


def test_evaluation_calibration_and_metric_score_after_the_resize(dataset, tmp_path):
    resize = Resize(size=(32, 32), interpolation="bilinear")  # then one crop is the whole image
    model = build_model(loda_preset("tiny", resize=resize), seed=2)
    model.save_pretrained(tmp_path)
    images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(resize(images))
        metric = LoDaMetric(tmp_path, crops=3)
        torch.testing.assert_close(metric.raw(images), expected)
        rows = [0, 5, 9]
        files = torch.stack([resize(load_image(dataset.paths[row])) for row in rows])
        torch.testing.assert_close(torch.from_numpy(predict(model, dataset, rows, crops=2)).float(), model(files))
        torch.testing.assert_close(torch.from_numpy(raw_table_scores(model, dataset, rows)).float(), model(files))
    assert "images resized: 32x32 px (bilinear)" in metric_info(f"loda:{tmp_path}").description


def test_command_line(tmp_path, capsys):
    assert main(["loda", "info", "--preset", "base"]) == 0
    assert "trainable parameters: 8,927,488" in capsys.readouterr().out
    data = tmp_path / "data"
    assert (
        main(
            [
                "loda",
                "make-dataset",
                "--out",
                str(data),
                "--references",
                "3",
                "--size",
                "32",
                "--levels",
                "2",
                "--families",
                "gaussian_noise,contrast",
            ]
        )
        == 0
    )
    meta = str(data / "meta.csv")
    assert "12 distorted images" in capsys.readouterr().out
    common = [
        "--meta",
        meta,
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--crops-per-image",
        "1",
        "--test-crops",
        "2",
        "--log-every",
        "0",
    ]
    assert main(["loda", "train", *common, "--random-split", "0", "--out", str(tmp_path / "run")]) == 0
    assert "test: SRCC" in capsys.readouterr().out
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    assert main(["loda", "info", "--checkpoint", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "trainable parameters: 20,096" in out and "images: native size before the 32 px crops" in out
    # a dataset preset sets the official resize and crops, unless given explicitly; the output says which
    preset = [
        "--meta",
        meta,
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--log-every",
        "0",
        "--calibration-crops",
        "0",
        "--no-test",
    ]
    assert main(["loda", "train", *preset, "--dataset", "tid2013", "--out", str(tmp_path / "tid")]) == 0
    assert (
        "pre-processing: native size, then 10 random 32 px training crops per image (the official tid2013 "
        "pre-processing)"
    ) in capsys.readouterr().out
    assert (
        main(
            [
                "loda",
                "train",
                *preset,
                "--dataset",
                "koniq10k",
                "--resize-short",
                "40",
                "--crops-per-image",
                "1",
                "--out",
                str(tmp_path / "koniq"),
            ]
        )
        == 0
    )
    assert (
        "pre-processing: shorter side to 40 px (bilinear), then 1 random 32 px training crops per image "
        "(changed from the official koniq10k pre-processing: shorter side to 384 px (bilinear), then 3 random "
        "32 px training crops per image)"
    ) in capsys.readouterr().out
    saved = json.loads((tmp_path / "koniq" / "config.json").read_text())
    assert saved["config"]["resize"] == {"short_side": 40, "size": None, "interpolation": "bilinear"}
    assert saved["training"]["recipe"]["crops_per_image"] == 1 and saved["training"]["dataset_preset"] == "koniq10k"
    assert main(["loda", "info", "--checkpoint", str(tmp_path / "koniq")]) == 0
    assert "images: shorter side to 40 px (bilinear) before the 32 px crops" in capsys.readouterr().out
    assert (
        main(
            [
                "loda",
                "eval",
                "--checkpoint",
                str(tmp_path / "run"),
                "--meta",
                meta,
                "--test-crops",
                "2",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(12 images)" in out and "images: native size before the 32 px crops (the checkpoint's" in out
    assert len(json.loads((tmp_path / "eval" / "eval.json").read_text())["predictions"]) == 12
    assert (
        main(
            [
                "loda",
                "protocol",
                *common,
                "--splits",
                "2",
                "--variants",
                "loda,linear_probe",
                "--resize",
                "40x36",
                "--out",
                str(tmp_path / "protocol"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 random 80% train splits (by reference image)" in out and "linear_probe" in out
    assert "pre-processing: 40x36 px (bicubic), then 1 random 32 px training crops per image" in out
    summary = json.loads((tmp_path / "protocol" / "summary.json").read_text())
    resized = {"short_side": None, "size": [40, 36], "interpolation": "bicubic"}
    assert summary["resize"] == {"loda": resized, "linear_probe": resized} and summary["dataset_preset"] is None
    # a pickle split file is read only when trusted
    with open(tmp_path / "split.pkl", "wb") as handle:
        pickle.dump({0: {"train": list(range(8)), "val": [], "test": [8, 9, 10, 11]}}, handle)
    split_args = ["--meta", meta, "--split-file", str(tmp_path / "split.pkl"), "--test-crops", "2"]
    assert main(["loda", "eval", "--checkpoint", str(tmp_path / "run"), *split_args]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["loda", "eval", "--checkpoint", str(tmp_path / "run"), *split_args, "--trust-pickle"]) == 0
    assert "(4 images)" in capsys.readouterr().out
    assert pd.read_csv(meta).shape[0] == 12
