"""The toy IQA models, in miniature: dataset, tiny LoDa, NIQE fitted on clean scenes, evaluation."""

import json

import pandas as pd
import pytest
import torch
from scipy import stats

from iqa_adapter.loda.data import load_image, read_meta
from iqa_adapter.metrics import create_metric, metric_info
from iqa_adapter.toy.iqa_models import (
    IQA_DATA_SEED,
    LODA_REPORT,
    evaluate_toy_iqa,
    fit_toy_niqe,
    make_toy_iqa_dataset,
    render_clean_scenes,
    toy_split,
    train_toy_loda,
)
from iqa_adapter.toy.scenes import render_scene, scene_for

FAMILIES = ("gaussian_noise", "gaussian_blur", "contrast")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 scenes x (3 families x 2 levels + the clean scene) = 28 images of 32 px."""
    out = tmp_path_factory.mktemp("toy_iqa") / "data"
    make_toy_iqa_dataset(out, num_references=4, families=FAMILIES, levels=2, progress=False)
    return out


def test_dataset_of_clean_and_distorted_scenes(data):
    frame = pd.read_csv(data / "meta.csv")
    assert len(frame) == 28 and set(frame["family"]) == {"clean", *FAMILIES}
    clean = frame[frame["family"] == "clean"]
    assert len(clean) == 4 and (clean["mos"] == 100).all() and (clean["img_name"] == clean["ref_name"]).all()
    assert (frame.loc[frame["family"] != "clean", "mos"] < 100).all()
    for _, group in frame[frame["family"] != "clean"].groupby(["ref_name", "family"]):
        assert group.sort_values("level")["mos"].is_monotonic_decreasing
    # the references are the rendered scenes of the IQA seed, not those of the base model's data (seed 0)
    first = load_image(data / "reference" / "ref_000.png")
    scene = torch.from_numpy(render_scene(scene_for(IQA_DATA_SEED, 0), 32)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(first, scene)
    torch.testing.assert_close(render_clean_scenes(1, IQA_DATA_SEED)[0], scene)
    assert IQA_DATA_SEED != 0
    manifest = json.loads((data / "toy_iqa_dataset.json").read_text())
    assert manifest["images"] == 28 and manifest["parameters"]["levels"] == 2
    # finished: the same call returns at once, other settings are refused
    again = make_toy_iqa_dataset(data, num_references=4, families=FAMILIES, levels=2, progress=False)
    assert again == data / "meta.csv"
    with pytest.raises(ValueError, match="other settings"):
        make_toy_iqa_dataset(data, num_references=5, families=FAMILIES, levels=2, progress=False)


def test_toy_loda_trains_calibrates_and_loads_as_a_metric(data, tmp_path, capsys):
    out = tmp_path / "loda"
    report = train_toy_loda(out, data, epochs=1, batch_size=8, progress=True)
    assert "held-out SRCC" in capsys.readouterr().out
    assert set(report["test"]) >= {"srcc", "plcc", "krcc", "rmse", "calibrated_rmse", "images"}
    assert report["test"]["images"] == 7 and report["train_images"] == 21  # 3 scenes train, 1 held out
    assert json.loads((out / LODA_REPORT).read_text()) == report
    assert not (out / "training_state.safetensors").exists() and not (tmp_path / "loda.partial").exists()

    metric = create_metric(f"loda:{out}")
    calibration = report["calibration"]
    assert metric.score_range == (calibration["mos_min"], calibration["mos_max"])
    assert metric_info(f"loda:{out}").score_range == metric.score_range
    images = render_clean_scenes(3, seed=12345)
    scores = metric.score(images)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    raw = create_metric(f"loda:{out}", calibrated=False).score(images)
    torch.testing.assert_close(scores, raw * calibration["a"] + calibration["b"])

    assert train_toy_loda(out, data, epochs=1, batch_size=8, progress=False) == report  # finished: returned
    with pytest.raises(ValueError, match="other settings"):
        train_toy_loda(out, data, epochs=2, batch_size=8, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(ValueError, match="not a finished toy LoDa"):
        train_toy_loda(tmp_path / "busy", data, epochs=1, batch_size=8, progress=False)


def test_toy_niqe_fits_on_clean_scenes_and_loads_as_a_metric(data, tmp_path):
    out = tmp_path / "niqe.safetensors"
    report = fit_toy_niqe(out, num_images=16, check_data=data, progress=False)
    assert report["parameters"]["patch_size"] == 8
    assert json.loads(out.with_suffix(".json").read_text()) == report
    check = report["check"]
    assert set(check) >= {"srcc", "plcc", "clean_wins", "nan", "images"} and check["images"] + check["nan"] == 7
    metric = create_metric("niqe", params=str(out))
    assert metric.patch_size == 8
    scores = metric.score(render_clean_scenes(4, seed=12345))
    assert scores.shape == (4,)
    assert fit_toy_niqe(out, num_images=16, progress=False) == report
    with pytest.raises(ValueError, match="other settings"):
        fit_toy_niqe(out, num_images=8, progress=False)


def test_evaluation_orients_every_metric(data):
    results = evaluate_toy_iqa(data, ["sharpness", "noise"], progress=False)
    table = read_meta(data / "meta.csv")
    split = toy_split(table)
    rows = split["test"]
    assert len(rows) == 7 and {table.refs[row] for row in rows}.isdisjoint(table.refs[row] for row in split["train"])
    images = torch.stack([load_image(table.paths[row]) for row in rows])
    for name, sign in (("sharpness", 1), ("noise", -1)):  # noise is lower-is-better: negated
        result = results[name]
        assert result["images"] == 7 and result["nan"] == 0 and 0 <= result["clean_wins"] <= 1
        scores = sign * create_metric(name).score(images).double().numpy()
        assert result["srcc"] == pytest.approx(stats.spearmanr(scores, table.mos[rows])[0])
        clean = scores[[table.frame["family"][row] == "clean" for row in rows]][0]
        distorted = scores[[table.frame["family"][row] != "clean" for row in rows]]
        assert result["clean_wins"] == pytest.approx(((clean > distorted) + 0.5 * (clean == distorted)).mean())
