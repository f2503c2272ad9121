import json

from PIL import Image

from iqa_adapter.cli import main
from test_toy_base_model import MINIATURE


def test_make_data_train_base_evaluate_base(tmp_path, capsys):
    data, run, report = tmp_path / "data", tmp_path / "run", tmp_path / "report"
    assert (
        main(["toy", "make-data", "--out", str(data), "--num-images", "8", "--format", "shards", "--shard-size", "4"])
        == 0
    )
    assert sorted(path.name for path in data.glob("*.tar")) == ["00000.tar", "00001.tar"]
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MINIATURE.to_dict()))
    assert (
        main(
            [
                "toy",
                "train-base",
                "--data",
                str(data),
                "--out",
                str(run),
                "--config",
                str(config),
                "--unet-steps",
                "2",
                "--frozen-text-encoder",
            ]
        )
        == 0
    )
    saved = json.loads((run / "toy_base_config.json").read_text())
    assert saved["unet_steps"] == 2 and saved["train_text_encoder"] is False
    assert (
        main(
            [
                "toy",
                "evaluate-base",
                "--pipeline",
                str(run / "pipeline"),
                "--out",
                str(report),
                "--count",
                "3",
                "--steps",
                "2",
                "--vae-images",
                "4",
                "--seeds",
                "2",
            ]
        )
        == 0
    )
    result = json.loads((report / "report.json").read_text())
    assert set(result["vae_psnr"]["per_family"]) >= {"gaussian_noise", "jpeg", "gaussian_blur"}
    assert result["caption_following"]["generated"]["images"] == 3
    assert result["caption_following"]["ceiling_clean"]["accuracy"]["colour"] == 1.0
    assert Image.open(report / "grid.png").size[0] == 2 * 96
    assert "chance" in capsys.readouterr().out


def test_make_data_run_as_the_world_records_it_makes_the_worlds_data(tmp_path):
    """world.json records ``toy make-data`` without --clean-fraction; the command must then make what the build's
    own call made (the CLI's default once kept 20 % of the images clean, the build 40 %)."""
    from iqa_adapter.toy.data import write_toy_dataset

    assert main(["toy", "make-data", "--out", str(tmp_path / "cli"), "--num-images", "4"]) == 0
    write_toy_dataset(tmp_path / "build", 4, progress=False)
    manifests = [json.loads((tmp_path / name / "toy_dataset.json").read_text()) for name in ("cli", "build")]
    assert manifests[0]["parameters"] == manifests[1]["parameters"]
