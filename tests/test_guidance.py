import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from conftest import two_metrics
from iqa_adapter import IQAAdapter
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.cli import main
from iqa_adapter.generation import generate
from iqa_adapter.guidance import IQAGuidance, guidance_objective
from iqa_adapter.metrics import NotDifferentiableError, create_metric

SEEDS = (0, 1, 2)


def final_images(pipe, guidance: IQAGuidance | None, seed: int, steps: int = 6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    call = dict(num_inference_steps=steps, guidance_scale=5.0, generator=generator, output_type="pt")
    if guidance is None:
        return pipe("a red circle", **call).images
    with guidance.applied(pipe):
        return pipe("a red circle", **call).images


@pytest.mark.parametrize("metric_name", ["sharpness", "contrast", "noise"])
def test_small_alpha_moves_the_sample_towards_a_better_score(sd_pipe, metric_name):
    metric = create_metric(metric_name)
    sign = 1 if metric.higher_is_better else -1
    for seed in SEEDS:
        plain = float(metric.score(final_images(sd_pipe, None, seed))[0])
        guided = float(metric.score(final_images(sd_pipe, IQAGuidance(metric, alpha=2.0), seed))[0])
        assert sign * (guided - plain) > 0, (seed, plain, guided)


def test_alpha_zero_and_steps_outside_the_window_change_nothing(sd_pipe):
    metric = create_metric("sharpness")
    plain = final_images(sd_pipe, None, 0)
    off = IQAGuidance(metric, alpha=0.0)
    assert torch.equal(final_images(sd_pipe, off, 0), plain) and off.last_scores == []
    late = IQAGuidance(metric, alpha=5.0, window=(0.5, 1.0))
    guided = final_images(sd_pipe, late, 0, steps=6)
    sd_pipe.scheduler.set_timesteps(6)
    in_window = [t for t in sd_pipe.scheduler.timesteps.tolist() if 1 - t / 1000 >= 0.5]
    assert 0 < len(in_window) < 6 and len(late.last_scores) == len(in_window)  # only the steps of the last half
    assert not torch.equal(guided, plain)
    assert torch.equal(final_images(sd_pipe, None, 0), plain)  # the hook is gone after the block


def test_runs_under_cfg_for_sdxl_with_reduced_decoding(sdxl_pipe):
    metric = create_metric("contrast")
    guidance = IQAGuidance(metric, alpha=5.0, decode_scale=0.5)
    images = final_images(sdxl_pipe, guidance, 0, steps=3)
    assert images.shape[0] == 1 and len(guidance.last_scores) == 3
    assert guidance.last_scores[0].shape == (1,)  # one gradient per image: the CFG halves share it
    assert not torch.equal(images, final_images(sdxl_pipe, None, 0, steps=3))


@pytest.mark.parametrize("scheduler", [EulerDiscreteScheduler, DDIMScheduler])
def test_other_schedulers_and_v_prediction(scheduler):
    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    metric = create_metric("sharpness")
    plain = float(metric.score(final_images(pipe, None, 0))[0])
    guided = float(metric.score(final_images(pipe, IQAGuidance(metric, alpha=2.0), 0))[0])
    assert guided > plain


def test_objective_is_a_log_distance_from_the_worst_bound():
    piqe, sharpness = create_metric("piqe"), create_metric("sharpness")
    scores = torch.tensor([10.0, 50.0])
    assert torch.allclose(guidance_objective(scores, sharpness), torch.log(scores))
    assert torch.allclose(guidance_objective(scores, piqe), torch.log(100 - scores))

    class Unbounded(type(sharpness)):
        higher_is_better = False
        score_range = (-math.inf, math.inf)

    assert torch.equal(guidance_objective(scores, Unbounded()), -scores)


def test_errors():
    with pytest.raises(NotDifferentiableError, match="differentiable"):
        IQAGuidance(create_metric("piqe"))
    with pytest.raises(ValueError, match="window"):
        IQAGuidance(create_metric("sharpness"), window=(0.8, 0.2))


def test_generate_with_guidance_and_an_adapter_records_it(sd_pipe, tmp_path):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    guidance = IQAGuidance(create_metric("sharpness"), alpha=3.0)
    results = generate(
        sd_pipe, adapter, "a red circle", {"sharp": "p99", "aes": "p50"}, steps=2, progress=False, iqa_guidance=guidance
    )
    assert results[0].settings["iqa_guidance"] == {
        "metric": "sharpness",
        "alpha": 3.0,
        "window": [0.0, 1.0],
        "decode_scale": 1.0,
    }
    base_only = generate(sd_pipe, None, "a red circle", steps=2, progress=False)
    assert base_only[0].settings["quality"] == {} and base_only[0].settings["scale"] is None
    with pytest.raises(ValueError, match="need an adapter"):
        generate(sd_pipe, None, "a red circle", {"sharp": "p99"}, steps=2, progress=False)


def test_cli_gradient_guidance_without_adapter(tmp_path):
    base = tmp_path / "base"
    tiny_sd_pipeline(seed=0).save_pretrained(base)
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--base",
                str(base),
                "--no-adapter",
                "--prompt",
                "a red circle",
                "--steps",
                "2",
                "--guidance-metric",
                "sharpness",
                "--guidance-alpha",
                "10",
                "--guidance-window",
                "0.5,1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sidecar = json.loads((out / "0000.json").read_text())
    assert sidecar["iqa_guidance"]["window"] == [0.5, 1.0] and sidecar["adapter"] is None
