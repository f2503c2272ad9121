import json

import pytest
import torch

from iqa_adapter.cli import main
from iqa_adapter.demo import DistortionClassifier, transfer_by_family
from iqa_adapter.distortions import FAMILIES, distort
from iqa_adapter.toy.scenes import render_scene, scene_for
from iqa_adapter.toy.world import ToyWorld, WorldSettings, build_world

REPORT_KEYS = (
    "target_metrics",
    "percentile_sweep",
    "relgain",
    "scale_sweep",
    "negative_guidance",
    "n_images",
    "seconds",
    "gradient_guidance",
    "reference_transfer",
)
METRICS = {"loda", "niqe", "piqe", "sharpness", "noise", "blockiness", "colorfulness", "contrast"}


def check_report(out, report: dict) -> None:
    assert set(REPORT_KEYS) <= set(report) and report["target_metrics"] == ["loda", "niqe"]
    for name in METRICS:
        sweep = report["percentile_sweep"][name]
        assert len(sweep["percentiles"]) == len(sweep["mean_scores"]) and "spearman" in sweep
        assert name in report["relgain"]["p99"] and name in report["relgain"]["p1"]
        assert name in report["negative_guidance"]["relgain"] and name in report["gradient_guidance"]["relgain"]
        assert len(report["scale_sweep"][name]["mean_scores"]) == len(report["scale_sweep"][name]["scales"])
    assert 0 <= report["reference_transfer"]["classifier_accuracy"] <= 1
    assert {"clean", "gaussian_blur", "jpeg", "gaussian_noise"} <= set(report["reference_transfer"])
    for values in transfer_by_family(report["reference_transfer"]).values():
        assert 0 <= values["match"] <= 1 and 0 <= values["content_leak"] <= 1
    rows = (out / "images" / "images.csv").read_text().splitlines()
    assert len(rows) == 1 + report["n_images"]
    for figure in ("percentile_grid", "percentile_sweep", "relgain", "scale_sweep"):
        assert (out / report["figures"][figure]).is_file()
    assert (out / "figures" / "reference_transfer.png").is_file() and (out / "report.md").is_file()
    # the rest of the paper's evaluation, through the same code with the toy world's models
    following = report["prompt_following"]
    assert {"base", "adapter/p1", "adapter/p99"} <= set(following)
    assert set(following["base"]) == {"colour", "position", "background", "overall"}
    frechet = next(iter(report["frechet"].values()))
    assert {"base", "adapter/p1", "adapter/p99"} <= set(frechet) and "reference_all" in frechet["adapter/p99"]
    assert report["distances"]["ssim"]["p1"]["p99"] > 0 and "distances_ssim" in report["figures"]


def test_miniature_of_the_whole_toy_world_pipeline(tmp_path, capsys):
    """demo --retrain --quick: every toy model rebuilt by the project's commands (tiny settings), then the demo."""
    out = tmp_path / "demo"
    assert main(["demo", "--retrain", "--quick", "--pairs", "--out", str(out)]) == 0
    world = ToyWorld(out / "world").check()
    built = json.loads((world.root / "world.json").read_text())
    assert list(built["steps"]) == ["data", "base", "iqa_models", "annotate", "adapter", "reference_adapter"]
    assert json.loads((world.reference_adapter / "config.json").read_text())["reference"]["metric"] == "loda:../loda"
    records = {path: path.read_text() for path in world.root.rglob("*.json")}
    assert not [path for path, text in records.items() if str(tmp_path) in text]  # no path of the building machine
    assert json.loads((world.adapter / "config.json").read_text())["base_model"] == "../base"
    report = json.loads((out / "report.json").read_text())
    check_report(out, report)
    assert "claims:" in capsys.readouterr().out
    # demo --pairs: the adapter's p99 / p1 pairs (the miniature keeps every pair) and the restoration arms
    assert report["pairs"]["made"] == report["pairs"]["kept"] == 4
    assert sorted(path.name for path in (out / "pairs" / "hq").iterdir()) == sorted(
        path.name for path in (out / "pairs" / "lq").iterdir()
    )
    for arm in ("generated", "identity", "real"):
        assert {"psnr", "ssim"} <= set(report["restoration"][arm])
        assert set(report["restoration"][arm]["families"]) == set(FAMILIES)
    assert report["restoration"]["pairs"]["generated"] == 4 and (out / report["restoration"]["figure"]).is_file()
    assert isinstance(report["claims"]["generated_pairs_teach_restoration"], bool)
    assert "IQA-Adapter as a degradation model" in (out / "report.md").read_text()

    # a resumed build adds up each step's time and counts the runs killed inside a step
    built["steps"]["adapter"]["finished"] = False
    (world.root / "world.json").write_text(json.dumps(built))
    build_world(world.root, WorldSettings.miniature(), progress=False)
    rebuilt = json.loads((world.root / "world.json").read_text())
    assert all(entry["finished"] for entry in rebuilt["steps"].values())
    assert rebuilt["steps"]["adapter"]["interrupted_runs"] == 1 and rebuilt["steps"]["data"]["interrupted_runs"] == 0
    assert all(rebuilt["steps"][name]["seconds"] >= built["steps"][name]["seconds"] for name in built["steps"])
    assert rebuilt["seconds"] == pytest.approx(sum(entry["seconds"] for entry in rebuilt["steps"].values()), abs=0.2)

    moved = tmp_path / "moved"  # a world folder works wherever it goes
    world.root.rename(moved)
    assert (
        main(
            [
                "generate",
                "--base",
                str(moved / "base"),
                "--adapter",
                str(moved / "reference_adapter"),
                "--prompt",
                "a red circle",
                "--reference",
                str(next((out / "images" / "base").glob("*.png"))),
                "--steps",
                "2",
                "--out",
                str(tmp_path / "gen"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--base",
                str(moved / "base"),
                "--adapter",
                str(moved / "adapter"),
                "--prompt",
                "a red circle",
                "--quality",
                "loda=p99",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "gen2"),
            ]
        )
        == 0
    )
    sidecar = json.loads((tmp_path / "gen2" / "0000.json").read_text())
    assert sidecar["quality"] == {"loda": "p99", "niqe": "p50"}  # the adapter's default target fills niqe


def statistics(pixels):
    """Hand-made distortion features: per-channel mean and std, and the energy of horizontal and vertical steps."""
    steps_x = (pixels[..., 1:] - pixels[..., :-1]).abs().mean(dim=(2, 3))
    steps_y = (pixels[..., 1:, :] - pixels[..., :-1, :]).abs().mean(dim=(2, 3))
    return torch.cat([pixels.mean(dim=(2, 3)), pixels.std(dim=(2, 3)), steps_x, steps_y], dim=1)


def test_distortion_classifier_tells_families_apart_on_held_out_images():
    scenes = [scene_for(7, index, kind="single", full_caption=True) for index in range(48)]
    clean = torch.stack([torch.from_numpy(render_scene(scene, 32)).permute(2, 0, 1).float() / 255 for scene in scenes])
    classifier = DistortionClassifier(statistics, clean)
    assert classifier.labels[0] == "clean" and len(classifier.labels) == 12
    assert classifier.accuracy > 3 / len(classifier.labels)  # chance is 1/12
    noisy = distort(clean[24:28], "gaussian_noise", torch.full((4,), 0.75), torch.Generator().manual_seed(0))
    assert classifier.predict(noisy).count("gaussian_noise") >= 3
