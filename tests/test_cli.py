import json

import pytest
import torch
from PIL import Image

from conftest import two_metrics
from iqa_adapter import IQAAdapter
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.cli import main
from test_convert import official_checkpoint, write


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny SD pipeline and an adapter for it, saved the way users have them on disk."""
    root = tmp_path_factory.mktemp("models")
    pipe = tiny_sd_pipeline(seed=0)
    pipe.save_pretrained(root / "base")
    IQAAdapter.for_unet(pipe, two_metrics(), seed=0, base_model=str(root / "base")).save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def test_generate_sweep_writes_images_sidecars_and_grid(tmp_path, model_dirs):
    base, adapter = model_dirs
    out = tmp_path / "out"
    code = main(
        [
            "generate",
            "--base",
            str(base),
            "--adapter",
            str(adapter),
            "--prompt",
            "a red circle",
            "--quality",
            "aes=p50",
            "--sweep",
            "sharp=p1,p50,p99",
            "--negative-quality",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--seed",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    sidecars = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(sidecars) == 6 and len(list(out.glob("0*.png"))) == 6
    assert [s["quality"]["sharp"] for s in sidecars] == ["p1", "p1", "p50", "p50", "p99", "p99"]
    assert [s["seed"] for s in sidecars] == [5, 6] * 3
    first = sidecars[0]
    assert first["negative_quality"] == 1.0 and first["scale"] == 0.5 and first["steps"] == 2
    assert first["quality_z"]["sharp"] == pytest.approx(-3.0) and first["adapter"] == str(adapter)
    grid = Image.open(out / "sweep_sharp.png")
    assert grid.width == 3 * 128 and grid.height > 2 * 128  # 3 targets x 2 seeds, cells enlarged to 128 px


def test_generate_reports_bad_targets_before_loading_the_model(tmp_path, model_dirs, capsys):
    base, adapter = model_dirs
    common = ["generate", "--base", "/nonexistent", "--adapter", str(adapter), "--prompt", "x", "--out", str(tmp_path)]
    assert main(common + ["--quality", "sharp=p99"]) == 2
    assert "missing quality target for 'aes'" in capsys.readouterr().err
    assert main(common + ["--quality", "sharp=p99", "--quality", "aes=p100"]) == 2
    assert "valid percentiles are p1 to p99" in capsys.readouterr().err
    assert main(common + ["--quality", "sharpness=p99", "--quality", "aes=p1"]) == 2
    assert "conditioned on: sharp, aes" in capsys.readouterr().err


def test_missing_adapter_directory_is_explained(tmp_path, capsys):
    assert main(["info", "--adapter", str(tmp_path)]) == 2
    assert "config.json and adapter.safetensors" in capsys.readouterr().err


def test_convert_official_cli_and_info(tmp_path, model_dirs, capsys):
    base, _ = model_dirs
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    image_proj, ip_adapter = official_checkpoint(unet, feature_dim=3)
    write(tmp_path / "ip_adapter.bin", image_proj, ip_adapter, "torch")
    args = [
        "convert-official",
        "--checkpoint",
        str(tmp_path / "ip_adapter.bin"),
        "--base",
        str(base),
        "--metrics",
        "topiq_nr,laion_aes",
        "--out",
        str(tmp_path / "converted"),
    ]
    assert main(args) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(args + ["--trust-pickle"]) == 0
    converted = IQAAdapter.from_pretrained(tmp_path / "converted")
    assert converted.metric_names == ["topiq_nr", "laion_aes"] and converted.config.flag_feature
    assert torch.equal(converted.projection.proj.weight, image_proj["proj.weight"])
    # the shipped CC3M table makes p99 of the official metrics available
    assert converted.z_scores({"topiq_nr": "p99", "laion_aes": "p50"})[0] == pytest.approx(2.011, abs=1e-3)
    capsys.readouterr()
    assert main(["info", "--adapter", str(tmp_path / "converted")]) == 0
    assert "topiq_nr (higher is better): mean 0.5492" in capsys.readouterr().out


def test_convert_official_rejects_unknown_metric(tmp_path, capsys):
    assert (
        main(
            [
                "convert-official",
                "--checkpoint",
                "x.safetensors",
                "--base",
                "sd15",
                "--metrics",
                "topiq",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no statistics for ['topiq']" in capsys.readouterr().err


def test_metrics_lists_directions_and_ranges(capsys):
    assert main(["metrics"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert {"piqe", "niqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast"} <= set(rows)
    assert rows["piqe"][1:5] == ["lower", "0", "..", "100"] and rows["sharpness"][1] == "higher"
    assert rows["sharpness"][5] == "yes" and rows["piqe"][5] == "no"


def write_textures(data, count: int):
    """``count`` smooth random 64x64 textures with captions, enough for a NIQE fit with 32 px patches."""
    data.mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=64, mode="bicubic")
        pixels = (smooth.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(pixels).save(data / f"{index}.png")
        (data / f"{index}.txt").write_text(f"texture {index}")


def test_niqe_fit_then_annotate_with_metric_options(tmp_path, capsys):
    import pandas as pd

    data = tmp_path / "data"
    write_textures(data, 4)
    params = tmp_path / "niqe.safetensors"
    assert main(["niqe-fit", "--images", str(data), "--out", str(params), "--patch-size", "32"]) == 0
    assert f"niqe.params={params}" in capsys.readouterr().out

    out = tmp_path / "scores"
    assert (
        main(
            [
                "annotate",
                "--data",
                str(data),
                "--metrics",
                "niqe,sharpness",
                "--out",
                str(out),
                "--resize",
                "none",
                "--workers",
                "0",
                "--batch-size",
                "2",
                "--metric-option",
                f"niqe.params={params}",
                "--no-progress",
            ]
        )
        == 0
    )
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["key"].tolist() == ["0", "1", "2", "3"] and scores["caption"].tolist()[0] == "texture 0"
    assert scores["niqe"].notna().all() and (scores["sharpness"] > 0).all()
    assert {"stats.csv", "skipped.csv"} <= {path.name for path in out.iterdir()}


def test_annotate_errors_name_the_problem(tmp_path, capsys):
    assert (
        main(["annotate", "--data", str(tmp_path / "missing"), "--metrics", "piqe", "--out", str(tmp_path / "o")]) == 2
    )
    assert "do not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "annotate",
                "--data",
                str(tmp_path),
                "--metrics",
                "piqe",
                "--out",
                str(tmp_path / "o"),
                "--metric-option",
                "params=x",
            ]
        )
        == 2
    )
    assert "METRIC.OPTION=VALUE" in capsys.readouterr().err


def test_a_failed_start_leaves_no_job_that_refuses_the_corrected_command(tmp_path, capsys):
    data = tmp_path / "data"
    write_textures(data, 3)
    command = [
        "annotate",
        "--data",
        str(data),
        "--metrics",
        "niqe,sharpness",
        "--out",
        str(tmp_path / "o"),
        "--workers",
        "0",
        "--no-progress",
    ]
    assert main(command) == 2 and "niqe.params=FILE" in capsys.readouterr().err
    params = tmp_path / "niqe.safetensors"
    assert main(["niqe-fit", "--images", str(data), "--out", str(params), "--patch-size", "32"]) == 0
    assert main(command + ["--metric-option", f"niqe.params={params}"]) == 0


def test_evaluate_writes_the_report(tmp_path, model_dirs, capsys):
    base, adapter = model_dirs
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--base",
                str(base),
                "--adapter",
                str(adapter),
                "--metrics",
                "sharpness,contrast",
                "--prompt",
                "a red circle",
                "--seeds",
                "1",
                "--steps",
                "2",
                "--scale",
                "0.75",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert report["default_scale"] == 0.75 and set(report["relgain"]["p99"]) == {"sharpness", "contrast"}
    assert report["settings"]["scale"] == 0.75 and report["versions"]["iqa_adapter"]
    assert "Claims of the paper" in capsys.readouterr().out


def test_atomic_writes_have_the_usual_permissions(tmp_path):
    import os

    from iqa_adapter.io_utils import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- behaviour a new user meets (toy world)


def toy_generate(out, *extra: str) -> list[str]:
    return [
        "generate",
        "--prompt",
        "a red circle",
        "--quality",
        "cnniqa=p99",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_an_output_folder_never_mixes_two_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(toy_generate(out, "--num-images", "3")) == 0
    (out / "notes.txt").write_text("mine")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert main(toy_generate(out, "--num-images", "2")) == 2
    assert "already holds 6 files of an earlier run" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert main(toy_generate(out, "--num-images", "2", "--overwrite")) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "0000.json",
        "0000.png",
        "0001.json",
        "0001.png",
        "notes.txt",
    ]


def test_init_image_is_generated_at_the_requested_size(tmp_path, capsys):
    Image.new("RGB", (600, 400), (30, 200, 30)).save(tmp_path / "large.png")
    assert main(toy_generate(tmp_path / "a", "--init-image", str(tmp_path / "large.png"))) == 0
    assert "--init-image resized from 600x400 to 32x32" in capsys.readouterr().out
    assert Image.open(tmp_path / "a" / "0000.png").size == (32, 32)  # the toy base model's size
    assert (
        main(
            toy_generate(tmp_path / "b", "--init-image", str(tmp_path / "large.png"), "--width", "48", "--height", "24")
        )
        == 0
    )
    assert Image.open(tmp_path / "b" / "0000.png").size == (48, 24)


def test_info_shows_the_train_scale_and_reads_old_configs_as_trained_at_half(tmp_path, capsys):
    import shutil

    from iqa_adapter.toy.world import shipped_world

    shutil.copytree(shipped_world().adapter, tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    assert config["train_scale"] == 1.0  # the shipped toy adapters were trained at full scale and say so
    del config["train_scale"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert IQAAdapter.from_pretrained(tmp_path / "old").config.train_scale == 0.5
    assert main(["info", "--adapter", str(tmp_path / "old")]) == 0
    assert "trained at 0.5 (not recorded" in capsys.readouterr().out


def test_info_shows_targets_in_quality_order(tmp_path, capsys):
    from iqa_adapter.stats import MetricStats

    pipe = tiny_sd_pipeline(seed=0)
    niqe = MetricStats("niqe", mean=6.0, std=1.0, percentiles={1.0: 3.5, 50.0: 6.0, 99.0: 9.0}, higher_is_better=False)
    IQAAdapter.for_unet(pipe, [niqe], seed=0).save_pretrained(tmp_path / "adapter")
    assert main(["info", "--adapter", str(tmp_path / "adapter")]) == 0
    out = capsys.readouterr().out
    line = next(
        line
        for line in out.splitlines()
        if line.strip().startswith("p1 =") and f"p99 = {niqe.raw_from_percentile(99):.4g}" in line
    )
    assert f"p1 = {niqe.raw_from_percentile(1):.4g}" in line
    assert niqe.raw_from_percentile(99) < niqe.raw_from_percentile(1)  # lower NIQE is better: p99 is the low end
    assert "niqe (lower is better)" in out


@pytest.mark.parametrize("target", ["z1000", "500"])
def test_targets_outside_the_training_scores_warn(tmp_path, capsys, target):
    assert main(toy_generate(tmp_path / "out", "--quality", f"aesthetic={target}", "--no-progress")) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: quality target '{target}' for 'aesthetic'" in err
        and "outside the scores the adapter was trained on" in err
    )


def test_no_progress_is_quiet_and_counts_are_plural_aware(tmp_path, capsys):
    assert main(toy_generate(tmp_path / "out", "--no-progress")) == 0
    out, err = capsys.readouterr()
    assert err == "" and "wrote 1 image with JSON sidecars" in out


def test_the_final_progress_bar_is_printed_once(tmp_path, capsys):
    assert main(toy_generate(tmp_path / "out", "--num-images", "2")) == 0
    assert capsys.readouterr().err.count("images: 100%") <= 1  # tqdm's close() used to print it again


def test_toy_world_runs_on_one_thread_unless_told(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert main(toy_generate(tmp_path / "a", "--no-progress")) == 0
        assert torch.get_num_threads() == 1
        assert main(toy_generate(tmp_path / "b", "--no-progress", "--threads", "2")) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_evaluate_defaults_to_the_toy_world(tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--metrics",
                "sharpness",
                "--prompt",
                "a red circle",
                "--seeds",
                "1",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["target_metrics"] == ["cnniqa", "aesthetic"] and "embedded toy world" in capsys.readouterr().out


def test_an_unreachable_hub_fails_at_once_with_the_fix(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    from iqa_adapter import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub.hub_reachable.cache_clear()
    try:
        assert (
            main(
                [
                    "generate",
                    "--base",
                    "someone/some-model",
                    "--no-adapter",
                    "--prompt",
                    "x",
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 2
        )
    finally:
        hub.hub_reachable.cache_clear()
    err = capsys.readouterr().err
    assert "the Hugging Face Hub (http://127.0.0.1:9) cannot be reached, and it is not in the local cache" in err


def test_generate_with_several_adapters_is_the_python_api_with_a_list(tmp_path, model_dirs):
    """--adapter repeated: every adapter in its own slot, --scale one per adapter, --quality over all metrics."""
    from iqa_adapter.generation import generate
    from iqa_adapter.pipelines import load_pipeline
    from iqa_adapter.stats import MetricStats

    base, first = model_dirs
    second = tmp_path / "second"
    pipe = load_pipeline(str(base), "cpu", torch.float32)
    other = [
        MetricStats("noise", mean=2.0, std=1.0, percentiles={1.0: 5.0, 50.0: 2.0, 99.0: 0.5}, higher_is_better=False)
    ]
    IQAAdapter.for_unet(pipe, other, seed=3, base_model=str(base)).save_pretrained(second)
    out = tmp_path / "out"
    arguments = [
        "generate",
        "--base",
        str(base),
        "--adapter",
        str(first),
        "--adapter",
        str(second),
        "--prompt",
        "a dog",
    ]
    qualities = ["--quality", "sharp=p90", "--quality", "aes=p10", "--quality", "noise=p99"]
    assert main([*arguments, *qualities, "--scale", "0.4", "--scale", "0.9", "--steps", "2", "--out", str(out)]) == 0
    sidecar = json.loads((out / "0000.json").read_text())
    assert sidecar["adapter"] == [str(first), str(second)]
    assert sidecar["quality"] == {"sharp": "p90", "aes": "p10", "noise": "p99"}
    pipe.set_progress_bar_config(disable=True)
    expected = generate(
        pipe,
        [IQAAdapter.from_pretrained(first), IQAAdapter.from_pretrained(second)],
        "a dog",
        {"sharp": "p90", "aes": "p10", "noise": "p99"},
        scale=[0.4, 0.9],
        steps=2,
        progress=False,
    )[0].image
    assert Image.open(out / "0000.png").tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--scale", "0.1", "--scale", "0.2", "--scale", "0.3"], "scale gives 3 values for 2 adapters"),
        (["--quality", "blur=p50"], "no adapter is conditioned on blur; the adapters are conditioned on: aes, sharp"),
        (["--no-adapter"], "drop --no-adapter"),
    ],
)
def test_generate_with_several_adapters_refuses_in_one_line(tmp_path, model_dirs, capsys, extra, message):
    base, adapter = model_dirs
    arguments = ["generate", "--base", str(base), "--adapter", str(adapter), "--adapter", str(adapter)]
    assert main([*arguments, "--prompt", "a dog", *extra, "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
