import dataclasses
import json
from pathlib import Path

import pytest
import torch

import iqa_adapter.toy.world as world_module
from iqa_adapter.cli import main
from iqa_adapter.demo import transfer_by_family
from iqa_adapter.distortions import FAMILIES
from iqa_adapter.toy.world import (
    IN_PROCESS_THREADS,
    ToyWorld,
    WorldSettings,
    WorldStep,
    build_world,
    lane_order,
    recorded_step_seconds,
    shipped_world,
    simulated_lane_seconds,
    world_steps,
)

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
    "zoo",
    "relgain_matrix",
    "panel",
    "caption_accuracy",
    "claims",
)
METRICS = {
    "loda",
    "cnniqa",
    "aesthetic",
    "niqe",
    "piqe",
    "sharpness",
    "noise",
    "blockiness",
    "colorfulness",
    "contrast",
}
CONDITIONS = ("base", "p1", "p50", "p99")


def check_report(out, report: dict) -> None:
    assert set(REPORT_KEYS) <= set(report) and report["target_metrics"] == ["cnniqa", "aesthetic"]
    for name in METRICS:
        sweep = report["percentile_sweep"][name]
        assert len(sweep["percentiles"]) == len(sweep["mean_scores"]) and "spearman" in sweep
        assert name in report["relgain"]["p99"] and name in report["relgain"]["p1"]
        assert name in report["negative_guidance"]["relgain"] and name in report["gradient_guidance"]["relgain"]
        assert len(report["scale_sweep"][name]["mean_scores"]) == len(report["scale_sweep"][name]["scales"])
    # the zoo, the cross-metric matrix with its groups, the panel, caption accuracy, transfer, claims
    assert {"loda", "cnniqa", "aesthetic", "panel"} <= set(report["zoo"])
    assert all({"srcc", "plcc"} <= set(report["zoo"][name]) for name in ("loda", "cnniqa", "aesthetic", "panel"))
    assert 0 <= report["zoo"]["classifier"]["accuracy"] <= 1
    matrix = report["relgain_matrix"]
    assert set(matrix) == {"adapter", "loda", "cnniqa", "aesthetic"}
    assert {*METRICS, "mean", "mean_learned", "mean_classical"} == set(matrix["loda"])
    assert (out / "images" / "loda" / "p99").is_dir() and not (out / "images" / "loda" / "p50").exists()
    panel = report["panel"]
    assert set(panel["win_rate"]) == set(CONDITIONS) and set(panel["pairwise"]["p99"]) == {"base", "p1", "p50"}
    for a in CONDITIONS:
        for b in CONDITIONS:
            if a != b:
                assert panel["pairwise"][a][b] + panel["pairwise"][b][a] + panel["draws"][a][b] == pytest.approx(1)
    assert set(report["caption_accuracy"]) == set(CONDITIONS)
    assert set(report["caption_accuracy"]["p99"]) == {"colour", "shape", "position", "background"}
    transfer = report["reference_transfer"]
    assert 0 <= transfer["classifier_accuracy"] <= 1 and 0 <= transfer["mean_match"] <= 1
    # the miniature's classifier learned from rendered scenes, scenes redrawn by the VAE and base samples
    assert set(transfer["classifier_accuracy_by_part"]) == {"rendered", "round_trip", "generated"}
    assert "redrawn by the VAE" in (out / "report.md").read_text()
    assert 0 <= transfer["mean_paired_match"] <= 1 and transfer["clean"]["paired_match"] is None
    assert 0 <= transfer["separability"]["linear_probe_accuracy"] <= 1
    assert {"clean", "gaussian_blur", "jpeg", "gaussian_noise"} <= set(transfer)
    for family, values in transfer_by_family(transfer).items():
        assert 0 <= values["match"] <= 1 and 0 <= values["content_leak"] <= 1
        if family != "clean":  # the reference's own family is in its group
            assert values["paired_match"] <= values["paired_group_match"] <= 1
            assert 0 <= values["round_trip_match"] <= 1
    assert transfer["clean"]["round_trip_match"] is None
    assert transfer["clean"]["sharpness_ratio"] == transfer["clean"]["reference_sharpness_ratio"] == 1
    assert all(values["sharpness_ratio"] > 0 for values in transfer_by_family(transfer).values())
    assert "sharpness ratio" in (out / "report.md").read_text()
    assert transfer["mean_round_trip_match"] == pytest.approx(
        sum(transfer[family]["round_trip_match"] for family in FAMILIES) / len(FAMILIES)
    )
    assert transfer["mean_paired_match"] <= transfer["mean_paired_group_match"]
    assert all(isinstance(value, bool) for value in report["claims"].values())
    rows = (out / "images" / "images.csv").read_text().splitlines()
    assert len(rows) == 1 + report["n_images"]
    for figure in ("adapter_percentile_grid", "adapter_percentile_sweep", "adapter_relgain", "adapter_scale_sweep"):
        assert (out / report["figures"][figure]).is_file()
    assert set(panel["bradley_terry"]) == set(CONDITIONS)
    assert sum(entry["score"] for entry in panel["bradley_terry"].values()) == pytest.approx(0, abs=1e-9)
    for figure in ("reference_transfer", "panel_win_rates", "panel_pairwise", "panel_bradley_terry", "relgain_matrix"):
        assert (out / "figures" / f"{figure}.png").is_file()
    assert (out / "report.md").is_file()
    # the rest of the paper's evaluation, through the same code with the toy world's models
    following = report["prompt_following"]
    assert {"base", "adapter/p1", "adapter/p99"} <= set(following)
    assert set(following["base"]) == {"colour", "shape", "position", "background", "overall"}
    frechet = next(iter(report["frechet"].values()))
    assert {"base", "adapter/p1", "adapter/p99"} <= set(frechet) and "reference_all" in frechet["adapter/p99"]
    assert report["distances"]["ssim"]["p1"]["p99"] > 0 and "adapter_distances_ssim" in report["figures"]


def test_miniature_of_the_whole_toy_world_pipeline(tmp_path, capsys):
    """demo --retrain --quick: every toy model rebuilt by the project's commands (tiny settings), then the demo."""
    out = tmp_path / "demo"
    assert main(["demo", "--retrain", "--quick", "--pairs", "--out", str(out)]) == 0
    world = ToyWorld(out / "world").check()
    built = json.loads((world.root / "world.json").read_text())
    assert set(built["steps"]) == {
        "data",
        "base",
        "iqa_models",
        "zoo_cnniqa",
        "zoo_aesthetic",
        "zoo_panel",
        "zoo_classifier",
        "annotate",
        "cache",
        "adapter",
        "adapter_loda",
        "adapter_cnniqa",
        "adapter_aesthetic",
        "reference_adapter",
    }
    assert built["lanes"] == 2 and 0 < built["wall_seconds"] < built["seconds"]  # two lanes at once
    assert built["threads"] == IN_PROCESS_THREADS and torch.get_num_threads() == 1  # the demo's own count restored
    assert (
        json.loads((world.reference_adapter / "config.json").read_text())["reference"]["metric"] == "learned:../cnniqa"
    )
    records = {path: path.read_text() for path in world.root.rglob("*.json")}
    assert not [path for path, text in records.items() if str(tmp_path) in text]  # no path of the building machine
    assert json.loads((world.adapter / "config.json").read_text())["base_model"] == "../base"
    assert json.loads((world.metric_adapter("loda") / "config.json").read_text())["base_model"] == "../../base"
    for adapter_dir in (world.adapter, world.reference_adapter, *map(world.metric_adapter, ("loda", "cnniqa"))):
        assert json.loads((adapter_dir / "config.json").read_text())["default_scale"] == 1.0  # generation_scale
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

    # a resumed build skips the finished steps, reruns the one killed inside (counting that run), adds up its time
    built["steps"]["adapter"]["finished"] = False
    (world.root / "world.json").write_text(json.dumps(built))
    adapter_weights = (world.adapter / "adapter.safetensors").stat().st_mtime_ns
    adapter_bytes = (world.adapter / "adapter.safetensors").read_bytes()
    base_weights = {path: path.stat().st_mtime_ns for path in world.base.rglob("*.safetensors")}
    build_world(world.root, WorldSettings.miniature(), progress=False, lanes=1)
    rebuilt = json.loads((world.root / "world.json").read_text())
    assert all(entry["finished"] for entry in rebuilt["steps"].values())
    assert rebuilt["steps"]["adapter"]["interrupted_runs"] == 1 and rebuilt["steps"]["data"]["interrupted_runs"] == 0
    assert rebuilt["steps"]["adapter"]["seconds"] > built["steps"]["adapter"]["seconds"]
    assert all(rebuilt["steps"][name] == built["steps"][name] for name in built["steps"] if name != "adapter")
    assert (world.adapter / "adapter.safetensors").stat().st_mtime_ns != adapter_weights
    # every lane step runs with one thread: one lane or two, the same weights
    assert (world.adapter / "adapter.safetensors").read_bytes() == adapter_bytes
    assert {path: path.stat().st_mtime_ns for path in world.base.rglob("*.safetensors")} == base_weights
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
                "cnniqa=p99",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "gen2"),
            ]
        )
        == 0
    )
    sidecar = json.loads((tmp_path / "gen2" / "0000.json").read_text())
    assert sidecar["quality"] == {"cnniqa": "p99", "aesthetic": "p50"}  # the default target fills aesthetic


def test_a_build_with_another_recipe_reruns_every_step(tmp_path):
    """Finished steps are only skipped for the same world settings and base-model config."""
    from iqa_adapter.toy.base_model import ToyBaseConfig
    from iqa_adapter.toy.world import _earlier_steps

    settings = WorldSettings.miniature()
    recipe = {"settings": dataclasses.asdict(settings), "base_config": ToyBaseConfig().to_dict()}
    steps = {"data": {"command": "make-data", "seconds": 1.0, "finished": True, "interrupted_runs": 0}}
    log_file = tmp_path / "world.json"
    log_file.write_text(json.dumps({**recipe, "steps": steps}))
    assert _earlier_steps(log_file, recipe) == steps
    other_base = {**recipe, "base_config": ToyBaseConfig(unet_steps=ToyBaseConfig().unet_steps + 1).to_dict()}
    other_settings = {**recipe, "settings": dataclasses.asdict(dataclasses.replace(settings, seed=1))}
    assert _earlier_steps(log_file, other_base) == {} and _earlier_steps(log_file, other_settings) == {}


def test_lane_order_plans_the_shortest_simulated_build(monkeypatch):
    def step(name, *needs):
        return WorldStep(name, name, lambda: None, needs)

    # longest chain first: model (5 s) then adapter (60 s) in one lane, long_alone and short in the other
    steps = [step("short"), step("model"), step("adapter", "model"), step("long_alone")]
    seconds = {"short": 10.0, "model": 5.0, "adapter": 60.0, "long_alone": 50.0}
    assert [s.name for s in lane_order(steps, seconds)] == ["model", "adapter", "long_alone", "short"]
    assert simulated_lane_seconds(lane_order(steps, seconds), seconds) == 65.0
    # there the longest chain first ends with 40 s of work in one lane while the other idles 40 s; the plan fills it
    steps = [step("a"), step("b"), step("c"), step("d"), step("e")]
    seconds = {"a": 50.0, "b": 40.0, "c": 30.0, "d": 30.0, "e": 30.0}
    chain_first = simulated_lane_seconds(steps, seconds)  # already sorted longest first: 50+30 | 40+30+30 = 100
    planned = lane_order(steps, seconds)
    assert chain_first == 100.0 and simulated_lane_seconds(planned, seconds) == 90.0  # 50+40 | 30+30+30
    assert simulated_lane_seconds(planned, seconds, lanes=1) == sum(seconds.values())
    with pytest.raises(ValueError, match="never finish"):
        simulated_lane_seconds([step("x", "x")], {"x": 1.0})
    # the shipped world's recorded times: the plan is no longer than the longest chain first, nor shorter than the
    # work split evenly, and the same on every call
    shipped = [s for s in world_steps(Path("world"), WorldSettings()) if s.name not in ("data", "base")]
    recorded = recorded_step_seconds()
    planned = lane_order(shipped, recorded)
    assert sorted(s.name for s in planned) == sorted(s.name for s in shipped)
    assert [s.name for s in lane_order(shipped, recorded)] == [s.name for s in planned]
    work = sum(recorded.get(s.name, 1.0) for s in shipped) / 2
    monkeypatch.setattr(world_module, "LANE_PLANS", 0)  # the longest chain first alone
    chain_first = lane_order(shipped, recorded)
    assert work <= simulated_lane_seconds(planned, recorded) <= simulated_lane_seconds(chain_first, recorded)


def test_the_classifier_reads_vae_round_trips_of_noise_brightness_and_contrast():
    """The shipped toy VAE draws pixel noise as coloured blotches; the shipped classifier, which learned from scenes
    redrawn by that VAE, names the family of round trips of noisy scenes as of brightness and contrast changes
    (world 5's classifier, which had not seen round trips, named the noise in none of them)."""
    from iqa_adapter.demo import _round_trip_match
    from iqa_adapter.metrics.learned import LearnedModel
    from iqa_adapter.toy.base_model import load_toy_pipeline
    from iqa_adapter.toy.scenes import scene_for

    world = shipped_world()
    pipe = load_toy_pipeline(world.base)
    classifier = LearnedModel.from_pretrained(world.root / "classifier")
    scenes = [scene_for(7, index, kind="single") for index in range(8)]
    kept = _round_trip_match(pipe, classifier, scenes, 2, 32)
    assert set(kept) == set(FAMILIES)
    assert min(kept[family] for family in ("gaussian_noise", "impulse_noise", "brightness", "contrast")) >= 0.75


def test_the_shipped_reference_adapter_moves_detail_the_way_of_its_reference():
    """Read without the classifier: with a Gaussian-blur reference the shipped reference adapter draws less detail
    than with the clean reference (world 6, the demo's 32 images: sharpness ratio about half), with a Gaussian-noise
    reference more; both references are far stronger than what the adapter draws."""
    from iqa_adapter.adapter import IQAAdapter
    from iqa_adapter.demo import REFERENCE_LEVEL, demo_scenes
    from iqa_adapter.distortions import distort
    from iqa_adapter.generation import generate
    from iqa_adapter.images import rgb_tensor, to_pil_images
    from iqa_adapter.metrics import create_metric
    from iqa_adapter.toy.base_model import load_toy_pipeline
    from iqa_adapter.toy.scenes import render_scenes, scene_for

    torch.manual_seed(0)
    world = shipped_world()
    pipe = load_toy_pipeline(world.base)
    adapter = IQAAdapter.from_pretrained(world.reference_adapter)
    sharpness = create_metric("sharpness")
    prompts = [scene.caption for scene in demo_scenes(4)]
    clean = render_scenes([scene_for(11, 0, kind="single")], 32)
    generator = torch.Generator().manual_seed(0)

    def images_sharpness(reference: torch.Tensor) -> float:
        made = generate(
            pipe, adapter, prompts, references=to_pil_images(reference), seed=0, num_images=2, steps=20, progress=False
        )
        return float(sharpness(torch.stack([rgb_tensor(result.image) for result in made])).mean())

    with torch.no_grad():
        plain = images_sharpness(clean)
        blurred = images_sharpness(distort(clean, "gaussian_blur", REFERENCE_LEVEL, generator))
        noisy = images_sharpness(distort(clean, "gaussian_noise", REFERENCE_LEVEL, generator))
    assert blurred < 0.8 * plain and noisy > 1.5 * plain, (blurred / plain, noisy / plain)
