"""LoDa's data conventions, loss and evaluation metrics, against hand computations and scipy."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

from iqa_adapter.images import ImageReadError
from iqa_adapter.loda.data import (
    SKIPPED_FILE,
    EvalCrops,
    IQADataError,
    TrainCrops,
    crop_positions,
    drop_unreadable,
    epoch_batches,
    fit_min_size,
    load_image,
    prepare_images,
    random_splits,
    read_meta,
    read_split_file,
    split_from_column,
)
from iqa_adapter.loda.evaluate import correlation_metrics, fit_logistic, logistic4, summarize
from iqa_adapter.loda.losses import norm_in_norm_loss
from iqa_adapter.loda.preprocess import DATASET_PRESETS, PreprocessError, Resize, describe_preprocessing

# ---------------------------------------------------------------- loss


def test_norm_in_norm_loss_by_hand():
    predictions = np.array([0.2, -0.1, 0.5, 0.3])
    labels = np.array([3.0, 1.0, 4.5, 2.0])
    p = (predictions - predictions.mean()) / (predictions.std() + 1e-8)  # population std
    q = (labels - labels.mean()) / (labels.std() + 1e-8)
    loss0 = np.mean((p - q) ** 2) / 4
    rho = np.mean(p * q)
    loss1 = np.mean((rho * p - q) ** 2) / 4
    expected = (loss0 + loss1) / 2
    got = norm_in_norm_loss(torch.tensor(predictions), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # loss0 is (1 - PLCC) / 2, the paper's Eq. 5
    assert loss0 == pytest.approx((1 - stats.pearsonr(predictions, labels)[0]) / 2)
    # invariant to the scale and offset of either side; 0 for a perfect linear relation
    assert norm_in_norm_loss(torch.tensor(predictions) * 7 + 1, torch.tensor(labels)).item() == pytest.approx(expected)
    assert norm_in_norm_loss(torch.tensor(labels) * 0.1, torch.tensor(labels)).item() == pytest.approx(0, abs=1e-12)


def test_loss_gradient_goes_to_predictions_only():
    predictions = torch.tensor([0.1, 0.4, 0.2], requires_grad=True)
    labels = torch.tensor([1.0, 3.0, 2.5], requires_grad=True)
    norm_in_norm_loss(predictions, labels).backward()
    assert predictions.grad.abs().sum() > 0 and labels.grad is None
    with pytest.raises(ValueError, match="B >= 2"):
        norm_in_norm_loss(torch.tensor([0.1]), torch.tensor([1.0]))


# ---------------------------------------------------------------- metrics


def test_correlation_metrics_match_scipy_and_hand_values():
    predictions = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    mos = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1.5])
    metrics = correlation_metrics(predictions, mos)
    assert metrics["srcc"] == pytest.approx(stats.spearmanr(predictions, mos)[0])
    assert metrics["krcc"] == pytest.approx(stats.kendalltau(predictions, mos)[0])
    # by hand: ranks of predictions 1 4 3 6 5 2 vs mos 1 3 4 5 6 2 -> sum d^2 = 4 -> SRCC = 1 - 6*4/(6*35)
    assert metrics["srcc"] == pytest.approx(1 - 6 * 4 / (6 * 35))
    # 15 pairs, 2 discordant (0.4/0.35 and 0.8/0.7) -> KRCC = (13 - 2) / 15
    assert metrics["krcc"] == pytest.approx(11 / 15)
    mapped = fit_logistic(predictions, mos)
    assert metrics["plcc"] == pytest.approx(stats.pearsonr(mapped, mos)[0])
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((mapped - mos) ** 2)))


def test_correlation_metrics_of_three_images_use_a_straight_line():
    # the 4-parameter logistic needs 4 points; 3 (the minimum) get the linear fit instead of a scipy TypeError
    predictions, mos = np.array([0.1, 0.5, 0.3]), np.array([1.0, 4.0, 2.0])
    metrics = correlation_metrics(predictions, mos)
    assert metrics["srcc"] == pytest.approx(1) and metrics["plcc"] == pytest.approx(stats.pearsonr(predictions, mos)[0])


def test_logistic_fit_removes_a_monotone_nonlinearity():
    # MOS that are an exact logistic of the predictions: raw PLCC < 1, PLCC after the fit = 1
    predictions = np.linspace(-1, 1, 40)
    mos = logistic4(predictions, 5.0, 1.0, 0.1, 0.15)
    assert stats.pearsonr(predictions, mos)[0] < 0.97
    metrics = correlation_metrics(predictions, mos)
    assert metrics["plcc"] == pytest.approx(1, abs=1e-6) and metrics["rmse"] == pytest.approx(0, abs=1e-4)
    assert metrics["srcc"] == pytest.approx(1) and metrics["krcc"] == pytest.approx(1)
    assert np.isnan(correlation_metrics(np.zeros(5), mos[:5])["srcc"])


def test_summary_over_splits():
    runs = [{"srcc": s, "plcc": s, "krcc": s, "rmse": 1 - s} for s in (0.9, 0.7, 0.8, 0.6, 1.0)]
    summary = summarize(runs)
    assert summary["srcc"]["median"] == pytest.approx(0.8) and summary["srcc"]["mean"] == pytest.approx(0.8)
    assert summary["srcc"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.8, 0.6, 1.0]))
    assert summary["rmse"]["median"] == pytest.approx(0.2) and summary["srcc"]["runs"] == 5


# ---------------------------------------------------------------- splits


def test_random_splits_by_reference_never_leak():
    refs = [f"ref{i % 7}" for i in range(70)]
    splits = random_splits(70, refs, num_splits=10, seed=3)
    assert len(splits) == 10
    for split in splits:
        train_refs = {refs[i] for i in split["train"]}
        test_refs = {refs[i] for i in split["test"]}
        assert train_refs and test_refs and not train_refs & test_refs
        assert sorted(split["train"] + split["test"]) == list(range(70))
        assert len(train_refs) == round(0.8 * 7)
    assert len({tuple(s["test"]) for s in splits}) > 1, "the splits must differ"
    assert random_splits(70, refs, num_splits=10, seed=3) == splits
    by_image = random_splits(50, None, num_splits=2, seed=0)
    assert len(by_image[0]["train"]) == 40 and len(by_image[0]["test"]) == 10


def test_split_files_and_columns(tmp_path):
    frame = pd.DataFrame(
        {
            "image_name": ["a.png", "b.png", "c.png", "d.png"],
            "MOS": [1, 2, 3, 4],
            "split": ["train", "test", "val", "train"],
        }
    )
    frame.to_csv(tmp_path / "meta.csv", index=False)
    table = read_meta(tmp_path / "meta.csv")
    assert split_from_column(table, "split") == {"train": [0, 3], "val": [2], "test": [1]}
    data = {0: {"train": [0, 1], "val": [], "test": [2, 3]}, 1: {"train": [2, 3], "val": [1], "test": [0]}}
    (tmp_path / "split.json").write_text(json.dumps({str(k): v for k, v in data.items()}))
    assert read_split_file(tmp_path / "split.json") == [data[0], data[1]]
    with open(tmp_path / "split.pkl", "wb") as handle:
        pickle.dump(data, handle)
    with pytest.raises(IQADataError, match="--trust-pickle"):
        read_split_file(tmp_path / "split.pkl")
    assert read_split_file(tmp_path / "split.pkl", trust_pickle=True) == [data[0], data[1]]
    with pytest.raises(IQADataError, match="split 0 has row index 3, outside the meta CSV's 3 rows"):
        read_split_file(tmp_path / "split.json", rows=3)
    (tmp_path / "broken.json").write_text('{"0": {"train": [0, 1]')
    with pytest.raises(IQADataError, match="broken.json is not valid JSON"):
        read_split_file(tmp_path / "broken.json")
    with pytest.raises(IQADataError, match="not in"):
        split_from_column(table, "fold")


def test_meta_csv_columns(tmp_path):
    pd.DataFrame({"dist_name": ["x.png"], "ref_name": ["r.png"], "dmos": [2.5]}).to_csv(tmp_path / "m.csv", index=False)
    table = read_meta(tmp_path / "m.csv", root="/data", lower_is_better=True)
    assert str(table.paths[0]) == "/data/x.png" and table.refs == ["r.png"] and table.mos[0] == -2.5
    pd.DataFrame({"file": ["x.png"], "quality": [2.5]}).to_csv(tmp_path / "n.csv", index=False)
    with pytest.raises(IQADataError, match="no image path column"):
        read_meta(tmp_path / "n.csv")
    assert read_meta(tmp_path / "n.csv", image_column="file", mos_column="quality").mos[0] == 2.5


# ---------------------------------------------------------------- crops


def test_crop_positions():
    grid = crop_positions(60, 100, 32, 15, "uniform")
    assert len(grid) == 15 and len({top for top, _ in grid}) == 3 and len({left for _, left in grid}) == 5
    assert (0, 0) in grid and (28, 68) in grid  # corner to corner
    assert len({left for _, left in crop_positions(100, 60, 32, 15, "uniform")}) == 3  # tall: 5 rows
    rng = np.random.default_rng(0)
    random = crop_positions(60, 100, 32, 50, "random", rng)
    assert all(0 <= t <= 28 and 0 <= left <= 68 for t, left in random) and len(set(random)) > 10
    with pytest.raises(IQADataError, match="crop mode"):
        crop_positions(60, 100, 32, 3, "centre")


def test_fit_min_size_keeps_the_aspect():
    assert fit_min_size(torch.rand(3, 16, 40), 32).shape == (3, 32, 80)
    image = torch.rand(3, 40, 50)
    assert fit_min_size(image, 32) is image


@pytest.fixture
def image_table(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"img_name": f"{i}.png", "mos": float(i)})
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    return read_meta(tmp_path / "meta.csv")


def test_training_crops_are_reproducible_and_vary(image_table):
    crops = TrainCrops(image_table, [0, 2, 4], crop=32, crops_per_image=3, seed=1)
    assert len(crops) == 9
    first, label = crops[4]
    assert first.shape == (3, 32, 32) and label.item() == 2.0
    assert torch.equal(crops[4][0], first)
    assert not torch.equal(crops[3][0], first), "crops of one image differ"
    crops.set_epoch(1)
    assert not torch.equal(crops[4][0], first), "and differ between epochs"
    batches = epoch_batches(9, 4, seed=1, epoch=0)
    assert len(batches) == 2 and all(len(b) == 4 for b in batches) and len(set(sum(batches, []))) == 8
    assert batches == epoch_batches(9, 4, seed=1, epoch=0) != epoch_batches(9, 4, seed=1, epoch=1)
    with pytest.raises(IQADataError, match="--batch-size"):
        epoch_batches(3, 4, seed=1, epoch=0)


def test_test_crops(image_table):
    uniform = EvalCrops(image_table, [1, 3], crop=32, crops=4, mode="uniform", seed=0)
    assert uniform[0].shape == (4, 3, 32, 32)
    random = EvalCrops(image_table, [1, 3], crop=32, crops=4, mode="random", seed=0)
    assert torch.equal(random[1], EvalCrops(image_table, [1, 3], 32, 4, "random", seed=0)[1])


def test_test_crops_and_training_crops_follow_the_resize(image_table):
    resize = Resize(size=(36, 34), interpolation="bilinear")
    for row in (1, 3):
        resized = prepare_images(load_image(image_table.paths[row]), 32, resize)
        assert resized.shape == (3, 34, 36)
        one = EvalCrops(image_table, [row], crop=32, crops=1, mode="uniform", seed=0, resize=resize)[0]
        assert torch.equal(one[0], resized[:, :32, :32])  # one uniform crop: the top-left corner
    whole = Resize(size=(32, 32))  # the training crop is the whole resized image, perhaps flipped
    image, _ = TrainCrops(image_table, [2], crop=32, crops_per_image=1, seed=0, resize=whole)[0]
    resized = whole(load_image(image_table.paths[2]))
    assert any(
        torch.equal(image, candidate)
        for candidate in (resized, resized.flip(-1), resized.flip(-2), resized.flip(-1).flip(-2))
    )


# ---------------------------------------------------------------- pre-processing


def test_resize_to_a_shorter_side_as_torchvision():
    kadid = DATASET_PRESETS["kadid10k"].resize
    assert kadid(torch.rand(3, 400, 600)).shape == (3, 384, 576)  # 600x400 -> 576x384
    assert kadid(torch.rand(2, 3, 600, 400)).shape == (2, 3, 576, 384)  # portrait, batched
    assert kadid(torch.rand(3, 333, 500)).shape == (3, 384, 576)  # int(384 * 500 / 333) = 576, truncated
    assert DATASET_PRESETS["koniq10k"].resize(torch.rand(3, 768, 1024)).shape == (3, 384, 512)
    native = torch.rand(3, 384, 512)
    assert kadid(native) is native  # KADID-10k's own 512x384 images are left as they are
    assert Resize(size=(512, 384))(torch.rand(3, 100, 100)).shape == (3, 384, 512)
    assert prepare_images(torch.rand(3, 40, 60), 32, Resize(short_side=20)).shape == (3, 32, 48)  # then upscaled


def test_resize_matches_pil_within_rounding():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)  # noise: the hardest case
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    for interpolation, pil in (("bicubic", Image.Resampling.BICUBIC), ("bilinear", Image.Resampling.BILINEAR)):
        for short_side in (24, 56):  # down and up
            ours = Resize(short_side=short_side, interpolation=interpolation)(tensor)
            width, height = ours.shape[2], ours.shape[1]
            theirs = np.asarray(Image.fromarray(pixels).resize((width, height), pil), dtype=np.float32) / 255
            difference = np.abs(ours.permute(1, 2, 0).numpy() - theirs)
            assert difference.max() < 1.5 / 255 and difference.mean() < 0.5 / 255, (interpolation, short_side)


def test_resize_is_differentiable():
    images = torch.rand(1, 3, 40, 60, requires_grad=True)
    Resize(short_side=32)(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_dataset_presets_are_the_official_settings():
    official = {
        name: (preset.resize and (preset.resize.short_side, preset.resize.interpolation), preset.crops_per_image)
        for name, preset in DATASET_PRESETS.items()
    }
    assert official == {
        "live": ((384, "bicubic"), 5),
        "tid2013": (None, 10),
        "kadid10k": ((384, "bicubic"), 3),
        "livec": (None, 5),
        "koniq10k": ((384, "bilinear"), 3),
        "spaq": ((384, "bilinear"), 3),
        "flive": ((384, "bicubic"), 1),
    }
    kadid = DATASET_PRESETS["kadid10k"]
    assert describe_preprocessing(kadid.resize, 224, 3, "kadid10k") == (
        "shorter side to 384 px (bicubic), then 3 random 224 px training crops per image (the official kadid10k "
        "pre-processing)"
    )
    assert describe_preprocessing(None, 224, 3, "kadid10k").startswith(
        "native size, then 3 random 224 px training crops per image (changed from the official kadid10k "
        "pre-processing: shorter side to 384 px (bicubic)"
    )
    assert Resize.from_dict(Resize(size=[512, 384]).to_dict()) == Resize(size=(512, 384))
    for bad, message in (
        ({}, "either a shorter side"),
        ({"short_side": 384, "size": (1, 2)}, "either a shorter side"),
        ({"short_side": 0}, "integers >= 1"),
        ({"size": (512,)}, "integers >= 1"),
        ({"short_side": 384, "interpolation": "nearest"}, "choose bicubic or bilinear"),
    ):
        with pytest.raises(PreprocessError, match=message):
            Resize(**bad)


# ---------------------------------------------------------------- image files


def test_load_image_keeps_16_bit_grey_and_names_missing_files(tmp_path):
    Image.fromarray(np.full((4, 6), 30000, dtype=np.uint16)).save(tmp_path / "grey16.png")
    image = load_image(tmp_path / "grey16.png")
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    torch.testing.assert_close(image, torch.full((3, 4, 6), 30000 / 65535))  # not clipped to 1 as convert("RGB") does
    with pytest.raises(ImageReadError, match="missing.png listed in the meta CSV does not exist; check --root"):
        load_image(tmp_path / "missing.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "rgb.png").read_bytes()[:500])
    with pytest.raises(ImageReadError, match="cut.png.*truncated"):
        load_image(tmp_path / "cut.png")


def test_drop_unreadable_images(image_table, tmp_path, caplog):
    paths = image_table.paths
    paths[1].write_bytes(paths[1].read_bytes()[:200])  # truncated
    paths[2].write_bytes(b"")  # empty
    paths[4].unlink()  # missing
    split = {"train": [0, 1, 2, 3], "val": [], "test": [4, 5]}
    assert drop_unreadable(image_table, [split], tmp_path / "run") == [{"train": [0, 3], "val": [], "test": [5]}]
    assert "skipped 3 of 6 images that cannot be read; listed in" in caplog.text
    listed = pd.read_csv(tmp_path / "run" / SKIPPED_FILE)
    assert list(listed.columns) == ["path", "reason"] and listed["path"].tolist() == [str(paths[i]) for i in (1, 2, 4)]
    assert "truncated" in listed["reason"][0] and "empty" in listed["reason"][1] and "not exist" in listed["reason"][2]
    caplog.clear()
    # only the rows in use are read; without a folder, the log line names the files
    assert drop_unreadable(image_table, [{"test": [0, 1]}]) == [{"test": [0]}]
    assert f"skipped 1 of 2 images that cannot be read; {paths[1]}: image cannot be decoded" in caplog.text
    with pytest.raises(IQADataError, match=r"split 1: none of the 1 test images can be read \(1 unreadable"):
        drop_unreadable(image_table, [{"train": [0], "test": [3]}, {"train": [0], "test": [4]}])
