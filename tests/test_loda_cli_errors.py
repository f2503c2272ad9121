"""`iqa-adapter loda ...` with bad input: one `error:` line and exit code 2, never a traceback; unreadable
images are skipped, counted and listed, not fatal."""

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from iqa_adapter.cli import main
from iqa_adapter.loda import loda_preset
from iqa_adapter.loda.data import SKIPPED_FILE, read_meta
from iqa_adapter.loda.synthetic import make_dataset
from iqa_adapter.loda.train import STATE_FILE, TrainSettings, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = [
    "--preset",
    "tiny",
    "--backbone-init",
    "random",
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


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 12-image dataset, a trained tiny checkpoint and broken variants of both, by name."""
    root = tmp_path_factory.mktemp("loda_errors")
    meta = make_dataset(root / "data", num_references=3, size=32, levels=2, families=("gaussian_noise", "contrast"))
    checkpoint = root / "checkpoint"
    settings = TrainSettings(epochs=1, batch_size=8, crops_per_image=1, log_every=0, calibration_crops=0)
    train(loda_preset("tiny"), read_meta(meta), list(range(12)), settings, checkpoint)
    paths = {"meta": meta, "checkpoint": checkpoint, "missing": root / "missing"}
    (root / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (root / "empty.csv").write_text("")
    (root / "header_only.csv").write_text("img_name,mos\n")
    for name in ("no_weights", "truncated_weights", "broken_config", "broken_state"):
        shutil.copytree(checkpoint, root / name)
        paths[name] = root / name
    (root / "no_weights" / "loda.safetensors").unlink()
    weights = root / "truncated_weights" / "loda.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "broken_config" / "config.json").write_text('{"format": ')
    state = root / "broken_state" / STATE_FILE
    state.write_bytes(state.read_bytes()[:300])
    (root / "broken.json").write_text('{"0": {"train": [0, 1], ')
    (root / "outside.json").write_text(json.dumps({"0": {"train": [0, 1, 99], "test": [2, 3, 4]}}))
    (root / "split.json").write_text(json.dumps({"0": {"train": [0, 1, 2, 3], "test": [4, 5, 6]}}))
    unreadable = root / "unreadable"
    shutil.copytree(meta.parent, unreadable)
    for image in unreadable.rglob("*.png"):
        image.write_bytes(image.read_bytes()[:100])
    paths.update(
        {
            name.replace(".", "_"): root / name
            for name in ("binary.csv", "empty.csv", "header_only.csv", "broken.json", "outside.json", "split.json")
        }
    )
    paths["unreadable_meta"] = unreadable / "meta.csv"
    return {name: str(path) for name, path in paths.items()}


def _eval(checkpoint: str, *extra: str) -> list[str]:
    return ["loda", "eval", "--checkpoint", f"{{{checkpoint}}}", "--meta", "{meta}", "--test-crops", "2", *extra]


def _train(*extra: str, meta: str = "{meta}") -> list[str]:
    return ["loda", "train", "--meta", meta, *TINY, "--out", "{out}", *extra]


USAGE = True  # an argparse error: `iqa-adapter ...: error: argument ...` (after usage lines with a stock parser)

# (case, argv with {file} placeholders, usage error?, a piece of the message)
BAD_INPUTS = [
    ("missing meta CSV", _train(meta="{missing}.csv"), False, "missing.csv does not exist"),
    ("meta CSV not a CSV", _train(meta="{binary_csv}"), False, "binary.csv cannot be read as CSV"),
    ("empty meta CSV", _train(meta="{empty_csv}"), False, "empty.csv cannot be read as CSV"),
    ("meta CSV without rows", _train(meta="{header_only_csv}"), False, "header_only.csv has no rows"),
    ("missing checkpoint folder", _eval("missing"), False, "the folder does not exist"),
    ("checkpoint without weights", _eval("no_weights"), False, "loda.safetensors is missing"),
    ("truncated weights", _eval("truncated_weights"), False, "loda.safetensors is not a readable safetensors file"),
    ("broken checkpoint config", _eval("broken_config"), False, "config.json is not valid JSON"),
    (
        "broken JSON split file",
        _eval("checkpoint", "--split-file", "{broken_json}"),
        False,
        "broken.json is not valid JSON",
    ),
    ("split file outside the CSV", _eval("checkpoint", "--split-file", "{outside_json}"), False, "row index 99"),
    (
        "split index out of range",
        _eval("checkpoint", "--split-file", "{split_json}", "--split-index", "1"),
        False,
        "--split-index 1 is out of range",
    ),
    ("split without test rows", _eval("checkpoint", "--split-column", "family"), False, "no test rows"),
    ("unknown device", _eval("checkpoint", "--device", "abacus"), False, "--device 'abacus' is not a device"),
    ("no readable image", _train(meta="{unreadable_meta}"), False, "none of the 12 training images can be read"),
    (
        "damaged training state",
        ["loda", "train", "--meta", "{meta}", *TINY, "--out", "{broken_state}", "--resume"],
        False,
        "training_state.safetensors cannot be read",
    ),
    ("negative random split", _train("--random-split", "-1"), USAGE, "argument --random-split: must be an integer"),
    ("negative split index", _eval("checkpoint", "--split-index", "-2"), USAGE, "argument --split-index: must be"),
    ("negative learning rate", _train("--lr", "-0.1"), USAGE, "argument --lr: must be a number > 0"),
    ("negative weight decay", _train("--weight-decay", "-1"), USAGE, "argument --weight-decay: must be a number >= 0"),
    ("no crops per image", _train("--crops-per-image", "0"), USAGE, "argument --crops-per-image: must be an integer"),
    ("no test crops", _eval("checkpoint", "--test-crops", "0"), USAGE, "argument --test-crops: must be an integer"),
    (
        "train fraction 0",
        _train("--random-split", "0", "--train-fraction", "0"),
        USAGE,
        "argument --train-fraction: must be a number > 0 and < 1",
    ),
    ("train fraction 1", _train("--random-split", "0", "--train-fraction", "1"), USAGE, "> 0 and < 1, got 1.0"),
    ("output folder is a file", _train(meta="{meta}")[:-2] + ["--out", "{meta}"], USAGE, "meta.csv is a file"),
    ("eval --protocol is gone", _eval("checkpoint", "--protocol"), USAGE, "unrecognized arguments: --protocol"),
    (
        "interpolation without a resize",
        _train("--interpolation", "bilinear"),
        False,
        "--interpolation is the resize's; give --resize-short N or --resize WxH too",
    ),
    (
        "resize below the crop size",
        _train("--resize-short", "16"),
        False,
        "the resize (shorter side to 16 px (bicubic)) makes images smaller than the 32 px crops",
    ),
    ("resize not WxH", _train("--resize", "512x0"), USAGE, "argument --resize: must be WIDTHxHEIGHT in pixels"),
    ("two resizes", _train("--resize", "64x48", "--resize-short", "40"), USAGE, "not allowed with argument"),
    ("dataset without official settings", _train("--dataset", "csiq"), USAGE, "argument --dataset: invalid choice"),
    (
        "timm backbone not in the cache",
        ["loda", "info", "--vit", "timm/absent.x"],
        False,
        "cannot load the timm backbone 'timm/absent.x': it is not a local folder, HF_HUB_OFFLINE is set",
    ),
]


@pytest.mark.parametrize(
    "argv, usage_error, message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_gives_one_error_line(files, tmp_path, capsys, argv, usage_error, message):
    argv = [arg.format(out=tmp_path / "out", **files) for arg in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("iqa-adapter") if usage_error else lines[0].startswith("error:")
    assert message in lines[0]


@pytest.fixture
def one_truncated(files, tmp_path):
    """The dataset with its first image truncated; (meta CSV, that image)."""
    data = shutil.copytree(read_meta(files["meta"]).source.parent, tmp_path / "data")
    broken = read_meta(data / "meta.csv").paths[0]
    broken.write_bytes(broken.read_bytes()[:100])
    return str(data / "meta.csv"), broken


def test_train_skips_an_unreadable_image_and_resumes_exactly(one_truncated, tmp_path, capsys, caplog):
    meta, broken = one_truncated
    assert main(["loda", "train", "--meta", meta, *TINY, "--out", str(tmp_path / "straight")]) == 0
    assert "trained on 11 images" in capsys.readouterr().out
    listing = tmp_path / "straight" / SKIPPED_FILE
    assert f"skipped 1 of 12 images that cannot be read; listed in {listing}" in caplog.text
    skipped = pd.read_csv(listing)
    assert skipped["path"].tolist() == [str(broken)] and "truncated" in skipped["reason"][0]
    # paused after one of its two iterations, then resumed: the same rows, the same weights
    paused = ["loda", "train", "--meta", meta, *TINY, "--out", str(tmp_path / "paused")]
    assert main([*paused, "--max-iterations", "1"]) == 0 and main([*paused, "--resume"]) == 0
    straight, resumed = (
        load_file(tmp_path / "straight" / "loda.safetensors"),
        load_file(tmp_path / "paused" / "loda.safetensors"),
    )
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_eval_and_protocol_skip_unreadable_images(files, one_truncated, tmp_path, capsys, caplog):
    meta, broken = one_truncated
    assert main(["loda", "eval", "--checkpoint", files["checkpoint"], "--meta", meta, "--test-crops", "2"]) == 0
    assert "(11 images)" in capsys.readouterr().out
    assert f"skipped 1 of 12 images that cannot be read; {broken}: image cannot be decoded" in caplog.text
    protocol = ["loda", "protocol", "--meta", meta, *TINY, "--batch-size", "4", "--splits", "2"]  # 7 to 9 train images
    assert main([*protocol, "--out", str(tmp_path / "protocol")]) == 0
    assert pd.read_csv(tmp_path / "protocol" / SKIPPED_FILE)["path"].tolist() == [str(broken)]
    assert "2 random 80% train splits" in capsys.readouterr().out
