"""The paper's evaluation at scale: plans, resumable chunked passes, several adapters, several processes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import launch_two_cpu_processes, two_metrics
from iqa_adapter import IQAAdapter
from iqa_adapter.cli import main
from iqa_adapter.evaluation import EvaluationSettings, Measures, evaluate, oriented_spearman, relgain
from iqa_adapter.evaluation.passes import ScoreColumn
from iqa_adapter.evaluation.plan import EvaluationPlan, plan_conditions
from iqa_adapter.metrics import create_metric

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_relgain_by_hand_and_orientation():
    base, new = np.array([2.0, 4.0, 0.0]), np.array([3.0, 3.0, 5.0])
    assert relgain(base, new) == pytest.approx(((3 - 2) / 2 + (3 - 4) / 4) / 2 * 100)  # the zero base is left out
    assert relgain(base, new, higher_is_better=False) == pytest.approx(-12.5)
    assert relgain(np.array([-2.0]), np.array([-1.0])) == pytest.approx(50.0)  # |f(x)|: a rise stays positive
    assert np.isnan(relgain(np.array([0.0]), np.array([1.0])))


def test_spearman_orientation():
    inputs, rising = np.array([1, 2, 3, 4]), np.array([0.1, 0.2, 0.25, 0.9])
    assert oriented_spearman(inputs, rising) == pytest.approx(1.0)
    assert oriented_spearman(inputs, rising, higher_is_better=False) == pytest.approx(-1.0)
    assert np.isnan(oriented_spearman(inputs, np.ones(4)))


def test_plan_generates_the_base_once_and_never_twice_the_same_condition():
    conditions = plan_conditions({"a": 0.5, "b": 1.0}, percentiles=(1, 50, 99), scales=(0.0, 0.5, 1.0))
    names = [condition.name for condition in conditions]
    assert names == [
        "base",
        "a/p1",
        "a/p50",
        "a/p99",
        "a/scale_1_p99",
        "a/scale_1_p1",
        "a/negative_p99",
        "b/p1",
        "b/p50",
        "b/p99",
        "b/scale_0.5_p99",
        "b/scale_0.5_p1",
        "b/negative_p99",
    ]
    plan = EvaluationPlan(conditions, ["x", "y"], [3, 4])
    assert len(plan) == 13 * 4 and plan.item(5).condition == 1 and (plan.item(5).prompt, plan.item(5).seed) == (0, 4)
    assert list(plan.items_of("a/p50")) == [8, 9, 10, 11]
    assert plan.image_path(plan.item(5)).as_posix() == "images/a/p1/00000_s4.png"
    with pytest.raises(ValueError, match="must include p1 and p99"):
        plan_conditions({"a": 0.5}, percentiles=(50, 99))
    with pytest.raises(ValueError, match="without '/'"):
        plan_conditions({"a/b": 0.5})
    matrix_row = plan_conditions({"a": 0.5, "b": 1.0}, percentiles=(1, 50, 99), scales=(0.0, 0.5), relgain_only={"b"})
    assert [c.name for c in matrix_row if c.adapter == "b"] == ["b/p1", "b/p99"]
    with pytest.raises(ValueError, match=r"relgain-only adapters \['c'\]"):
        plan_conditions({"a": 0.5}, relgain_only={"c"})


def score_columns(names=("sharpness", "noise", "colorfulness")) -> list[ScoreColumn]:
    return [ScoreColumn(name, create_metric(name), {"name": name}) for name in names]


SMALL = dict(seeds=2, steps=2, percentiles=(1, 50, 99), scales=(0.0, 0.5, 1.0), chunk_size=5, batch_size=4)


def test_one_adapter_runs_every_experiment_and_writes_every_output(tmp_path, sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    report = evaluate(
        tmp_path,
        load_pipeline=lambda: sd_pipe,
        base_name="tiny",
        adapters={"a": adapter},
        metrics=score_columns(),
        prompts=["a red circle", "a blue square"],
        settings=EvaluationSettings(**SMALL),
        measures=Measures(distances=("ssim",)),
        progress=False,
    )
    images = 4  # 2 prompts x 2 seeds per condition: base, 3 percentiles, lambda = 1 at p99 and p1, negative
    assert report["n_images"] == images * 7 and len(list((tmp_path / "images").rglob("*.png"))) == images * 7
    assert report["target_metrics"] == ["sharp", "aes"] and set(report["relgain_matrix"]) == {"a"}
    for name in ("sharpness", "noise", "colorfulness"):
        sweep, scale = report["percentile_sweep"][name], report["scale_sweep"][name]
        assert sweep["percentiles"] == [1, 50, 99] and scale["scales"] == [0.0, 0.5, 1.0]
        assert scale["mean_scores"][0] == pytest.approx(sweep["base_mean"])  # lambda = 0 is the base model
        assert scale["mean_scores"][1] == pytest.approx(sweep["mean_scores"][2])  # default lambda at p99
        assert np.isfinite(report["relgain"]["p99"][name]) and np.isfinite(report["negative_guidance"]["relgain"][name])
        assert report["relgain_matrix"]["a"][name] == report["relgain"]["p99"][name]
    assert not report["metrics"]["noise"]["higher_is_better"]
    distances = report["distances"]["ssim"]
    assert distances["p1"]["p1"] == 0 and distances["p1"]["p99"] == distances["p99"]["p1"] > 0
    saved = json.loads((tmp_path / "report.json").read_text())
    assert (
        saved["relgain"] == report["relgain"]
        and "RelGain against the base model" in (tmp_path / "report.md").read_text()
    )
    table = pd.read_csv(tmp_path / "images" / "images.csv")
    assert len(table) == report["n_images"] and "score_sharpness" in table
    for figure in report["figures"].values():
        assert Image.open(tmp_path / figure).size[0] > 300
    assert not adapter.is_attached


def test_several_adapters_share_the_base_images_and_a_relgain_matrix(tmp_path, sd_pipe):
    adapters = {
        "first": IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0),
        "second": IQAAdapter.for_unet(sd_pipe, two_metrics()[:1], seed=1),
    }
    report = evaluate(
        tmp_path,
        load_pipeline=lambda: sd_pipe,
        base_name="tiny",
        adapters=adapters,
        metrics=score_columns(("sharpness", "contrast")),
        prompts=["a red circle"],
        settings=EvaluationSettings(**{**SMALL, "scales": (0.0, 0.5), "relgain_only": ("second",)}),
        measures=Measures(distances=(), metric_groups={"texture": ["sharpness"]}),
        progress=False,
    )
    assert len(list((tmp_path / "images" / "base").glob("*.png"))) == 2  # generated once for both
    assert sorted(path.name for path in (tmp_path / "images" / "second").iterdir()) == ["p1", "p99"]  # a matrix row
    assert set(report["adapters"]) == {"first", "second"} and "relgain" not in report  # no single adapter on top
    assert report["adapters"]["second"]["target_metrics"] == ["sharp"]
    matrix = report["relgain_matrix"]
    assert set(matrix) == {"first", "second"}
    assert set(matrix["first"]) == {"sharpness", "contrast", "mean", "mean_texture"}
    assert matrix["second"]["mean"] == pytest.approx(
        np.mean([matrix["second"]["sharpness"], matrix["second"]["contrast"]])
    )
    assert matrix["second"]["mean_texture"] == matrix["second"]["sharpness"]
    with pytest.raises(ValueError, match="metric group 'texture' must name scored metric columns"):
        evaluate(
            tmp_path / "other",
            load_pipeline=lambda: sd_pipe,
            base_name="tiny",
            adapters=adapters,
            metrics=score_columns(("contrast",)),
            prompts=["x"],
            settings=EvaluationSettings(**SMALL),
            measures=Measures(metric_groups={"texture": ["sharpness"]}),
            progress=False,
        )
    assert {"first_percentile_grid", "second_relgain", "relgain_matrix"} <= set(report["figures"])


def test_new_metrics_are_scored_without_generating_again(tmp_path, sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    common = dict(
        load_pipeline=lambda: sd_pipe,
        base_name="tiny",
        adapters={"a": adapter},
        prompts=["a red circle"],
        settings=EvaluationSettings(**SMALL),
        measures=Measures(distances=()),
        progress=False,
    )
    with pytest.raises(ValueError, match="not generated yet.*without --skip-generation"):
        evaluate(tmp_path, metrics=score_columns(("sharpness",)), skip_generation=True, **common)
    evaluate(tmp_path, metrics=score_columns(("sharpness",)), **common)
    images = {path: path.stat().st_mtime_ns for path in (tmp_path / "images").rglob("*.png")}
    sharpness = {path: path.stat().st_mtime_ns for path in (tmp_path / "scores" / "sharpness").glob("chunk_*")}

    def unloadable():
        raise AssertionError("the pipeline must not be loaded when every image exists")

    report = evaluate(
        tmp_path,
        metrics=score_columns(("sharpness", "contrast")),
        **{**common, "load_pipeline": unloadable, "skip_generation": True},
    )
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "images").rglob("*.png")} == images
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "scores" / "sharpness").glob("chunk_*")} == sharpness
    assert set(report["percentile_sweep"]) == {"sharpness", "contrast"}
    # distances likewise: one folder per measure, so adding one leaves the other's files, and dropping one from
    # the report ignores its files
    with_ssim = {**common, "load_pipeline": unloadable, "measures": Measures(distances=("ssim",))}
    ssim = evaluate(tmp_path, metrics=score_columns(("sharpness",)), **with_ssim)["distances"]["ssim"]
    ssim_files = {path: path.stat().st_mtime_ns for path in (tmp_path / "distances" / "ssim").glob("chunk_*")}
    both = evaluate(
        tmp_path,
        metrics=score_columns(("sharpness",)),
        **{**with_ssim, "measures": Measures(distances=("ssim", "ms_ssim"))},
    )["distances"]
    assert both["ssim"] == ssim and set(both) == {"ssim", "ms_ssim", "ms_ssim_scales"}
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "distances" / "ssim").glob("chunk_*")} == ssim_files
    only = evaluate(
        tmp_path, metrics=score_columns(("sharpness",)), **{**with_ssim, "measures": Measures(distances=("ms_ssim",))}
    )["distances"]
    assert only["ms_ssim"] == both["ms_ssim"] and "ssim" not in only
    with pytest.raises(ValueError, match="other parameters.*seeds"):
        evaluate(
            tmp_path,
            metrics=score_columns(("sharpness",)),
            **{**common, "settings": EvaluationSettings(**{**SMALL, "seeds": 3})},
        )


def toy_command(out, *extra) -> list[str]:
    return [
        "evaluate",
        "--metrics",
        "sharpness,colorfulness",
        "--prompt",
        "a red circle on the left",
        "--prompt",
        "a blue square",
        "--seeds",
        "2",
        "--steps",
        "2",
        "--percentiles",
        "1,50,99",
        "--scales",
        "0,0.5",
        "--chunk-size",
        "3",
        "--batch-size",
        "3",
        "--distances",
        "ssim",
        "--no-progress",
        "--out",
        str(out),
        *extra,
    ]


def comparable(report: dict) -> dict:
    """A report without what depends on timing."""
    return {key: value for key, value in report.items() if key not in ("seconds",)}


def test_a_killed_evaluation_resumes_losing_only_unfinished_chunks(tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "iqa_adapter", *toy_command(out)]
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path
    )
    deadline = time.monotonic() + 240
    while (
        len(list((out / "generation").glob("chunk_*.json"))) < 2
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = {path.name: path.stat().st_mtime_ns for path in (out / "generation").glob("chunk_*.json")}
    assert done and not (out / "report.json").exists(), process.stderr.read().decode()[-2000:]
    assert main(toy_command(out)) == 0
    assert {
        name: mtime
        for name, mtime in ((path.name, path.stat().st_mtime_ns) for path in (out / "generation").glob("chunk_*.json"))
        if name in done
    } == done
    assert main(toy_command(tmp_path / "straight")) == 0
    resumed = json.loads((out / "report.json").read_text())
    straight = json.loads((tmp_path / "straight" / "report.json").read_text())
    assert resumed["relgain"] == straight["relgain"] and resumed["distances"] == straight["distances"]
    for path in (tmp_path / "straight" / "images").rglob("*.png"):
        relative = path.relative_to(tmp_path / "straight")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(out / relative))), relative


def test_two_processes_give_the_report_of_one(tmp_path):
    assert main(toy_command(tmp_path / "single")) == 0
    finished = launch_two_cpu_processes(
        ["-m", "iqa_adapter", *toy_command(tmp_path / "multi")], timeout=600, cwd=tmp_path
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    multi = json.loads((tmp_path / "multi" / "report.json").read_text())
    for key in ("relgain", "percentile_sweep", "scale_sweep", "negative_guidance", "distances", "relgain_matrix"):
        assert multi[key] == single[key], key
    assert finished.stdout.count("# IQA-Adapter evaluation") == 1  # one report, from the main process
    makers = {json.loads(path.read_text())["process"] for path in (tmp_path / "multi" / "generation").glob("chunk_*")}
    assert makers == {0, 1}  # both processes generated their share


def test_fidelity_prompt_following_and_distances_in_one_report(
    tmp_path, sd_pipe, dinov2_folder, clip_folder, tiny_models
):
    """Every measure at once with tiny random DINOv2, CLIP and OWLv2 models: the report's keys, shapes and
    properties (numbers from random models mean nothing)."""
    from iqa_adapter.evaluation.prompt_following import GenEvalRules, GenEvalScorer
    from iqa_adapter.evaluation.prompts import Prompt

    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        pixels = np.clip(rng.normal(0.5, 0.2, (32, 32, 3)) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(reference / f"{index}.png")
        (reference / f"{index}.txt").write_text(f"reference {index}")
    prompts = [
        Prompt(
            "a photo of a dog",
            0,
            "single_object",
            {"tag": "single_object", "include": [{"class": "dog", "count": 1}]},
            str(reference / "0.png"),
        ),
        Prompt(
            "a photo of two cats",
            1,
            "counting",
            {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}]},
            str(reference / "1.png"),
        ),
    ]
    scorer = GenEvalScorer(
        str(tiny_models / "owlv2"), str(tiny_models / "clip"), rules=GenEvalRules(threshold=0.0, counting_threshold=0.0)
    )
    features = f"dinov2:{dinov2_folder}"
    measures = Measures(
        extractors=[features, f"dino={features}"],
        reference=str(reference),
        reference_subsets=[50],
        subset_metrics=["sharpness", "contrast"],
        clip_model=str(clip_folder),
        following_scorer=scorer,
        distances=("ssim", "ms_ssim", f"features:{features}", f"dino_cosine=features:{features}"),
    )
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    report = evaluate(
        tmp_path / "out",
        load_pipeline=lambda: sd_pipe,
        base_name="tiny",
        adapters={"a": adapter},
        metrics=score_columns(("sharpness",)),
        prompts=prompts,
        measures=measures,
        settings=EvaluationSettings(**SMALL),
        progress=False,
    )
    frechet = report["frechet"][features]  # frechet.<extractor>.<condition>.<to what>
    measured = {"a/p1", "a/p50", "a/p99", "a/negative_p99"}
    assert set(frechet) == measured | {"base"} and set(frechet["base"]) == {"reference_all", "reference_top50"}
    assert all(set(frechet[name]) == {"base", "reference_all", "reference_top50"} for name in measured)
    assert all(value >= 0 for targets in frechet.values() for value in targets.values())
    assert report["frechet_sets"][features]["reference"]["images"] == {"all": 6, "top50": 3}
    assert set(report["clip_t"]) == measured | {"base"} and set(report["clip_i"]) == set(report["clip_t"])
    following = report["prompt_following"]  # prompt_following.<condition>.<task>
    assert set(following) == measured | {"base"}  # p1, p50, p99, negative guidance and base, side by side
    assert set(following["base"]) == {"single_object", "counting", "overall"}
    assert report["prompt_following_counts"]["base"]["prompts"] == 2
    for measure in ("ssim", "ms_ssim", f"features:{features}"):
        matrix = report["distances"][measure]
        assert list(matrix) == ["p1", "p50", "p99"] and matrix["p1"]["p99"] == matrix["p99"]["p1"]
    # NAME=SPEC: the same measure, reported, stored and drawn under the name
    assert report["frechet"]["dino"] == frechet and report["frechet_sets"]["dino"]["extractor"] == features
    assert report["distances"]["dino_cosine"] == report["distances"][f"features:{features}"]
    assert (tmp_path / "out" / "features" / "dino").is_dir() and (
        tmp_path / "out" / "distances" / "dino_cosine"
    ).is_dir()
    assert {"frechet_dino", "distances_dino_cosine"} <= set(report["figures"])
    assert report["distances"]["ms_ssim_scales"] == 2  # 32 px images: two scales fit an 11-pixel window
    for figure in ("frechet_" + features.replace(":", "_").replace("/", "_"), "clip", "prompt_following"):
        assert any(key.startswith(figure[:12]) for key in report["figures"]), figure
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Frechet distance" in markdown and "Prompt following" in markdown and "CLIP-T" in markdown
