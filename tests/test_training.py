import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image
from safetensors.torch import load_file

from conftest import launch_two_cpu_processes
from iqa_adapter import IQAAdapter
from iqa_adapter.adapter import _base_layer
from iqa_adapter.architectures import tiny_sd_pipeline, tiny_sdxl_pipeline
from iqa_adapter.training import TrainConfig, train
from iqa_adapter.training.base_model import FrozenBase, load_pipeline_for_training
from iqa_adapter.training.checkpoint import list_checkpoints
from iqa_adapter.training.data import ImageTransform, SampleDraw, StepSampler, sample_generator
from iqa_adapter.training.trainer import condition_drops, learning_rate_factor

NUM_IMAGES = 14
CORRUPT_KEY = "broken"
UNSCORED_KEY = "013"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny SD and SDXL bases on disk, a folder of captioned images and a score table for two metrics.

    The score table also scores a corrupt image (so training meets it) and leaves image 013 unscored.
    """
    root = tmp_path_factory.mktemp("training")
    tiny_sd_pipeline(seed=0).save_pretrained(root / "sd")
    tiny_sdxl_pipeline(seed=0).save_pretrained(root / "sdxl")
    v_pipe = tiny_sd_pipeline(seed=0)
    v_pipe.scheduler = DDIMScheduler.from_config(v_pipe.scheduler.config, prediction_type="v_prediction")
    v_pipe.save_pretrained(root / "sd_v")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    keys, noise, colour = [], [], []
    for index in range(NUM_IMAGES):
        key = f"{index:03d}"
        spread = 10 + 20 * (index % 4)
        pixels = np.clip(rng.random(3) * 255 + rng.normal(0, spread, (36, 44, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(data / f"{key}.png")
        (data / f"{key}.txt").write_text(f"a picture number {index % 3}")
        if key != UNSCORED_KEY:
            keys.append(key)
            noise.append(float(spread))
            colour.append(float(pixels.std()))
    (data / f"{CORRUPT_KEY}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (data / f"{CORRUPT_KEY}.txt").write_text("a corrupt picture")
    keys.append(CORRUPT_KEY)
    noise.append(30.0)
    colour.append(50.0)
    scores = root / "scores"
    scores.mkdir()
    table = pd.DataFrame({"key": keys, "noise": noise, "colorfulness": colour})
    table.to_parquet(scores / "scores.parquet")
    (root / "scores_readable").mkdir()
    table[table["key"] != CORRUPT_KEY].to_parquet(root / "scores_readable" / "scores.parquet")
    return root


def config(world: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        base=str(world / "sd"),
        data=str(world / "data"),
        scores=str(world / "scores"),
        metrics=["noise", "colorfulness"],
        out=str(out),
        resolution=32,
        batch_size=4,
        max_steps=3,
        checkpoint_every=100,
        num_workers=0,
        learning_rate=1e-3,
        progress=False,
        log_every=1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter.safetensors"))


def assert_same_weights(first: Path, second: Path, atol: float = 0.0) -> None:
    a, b = adapter_weights(first), adapter_weights(second)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------- the pieces


def test_step_sampler_covers_each_epoch_once_and_splits_over_processes():
    single = iter(StepSampler(num_samples=10, global_batch=4, seed=3))
    batches = [next(single) for _ in range(4)]
    epoch0 = [draw.index for batch in batches[:2] for draw in batch]
    assert len(set(epoch0)) == 8 and all(draw.micro_batch == 2 for draw in batches[2])  # 2 batches per epoch
    assert [draw.position for draw in batches[0]] == [0, 1, 2, 3]
    halves = [iter(StepSampler(10, 4, rank=rank, world=2, seed=3)) for rank in (0, 1)]
    for batch in batches:
        assert [*next(halves[0]), *next(halves[1])] == batch
    resumed = iter(StepSampler(10, 4, seed=3, start=3))
    assert next(resumed) == batches[3]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepSampler(3, 4)


def test_sample_generators_depend_on_the_sample_not_the_process():
    draw = SampleDraw(index=5, micro_batch=7, position=2)
    first = torch.rand(3, generator=sample_generator(0, draw, "noise"))
    assert torch.equal(first, torch.rand(3, generator=sample_generator(0, draw._replace(index=9), "noise")))
    assert not torch.equal(first, torch.rand(3, generator=sample_generator(0, draw, "timestep")))
    assert not torch.equal(first, torch.rand(3, generator=sample_generator(0, draw._replace(position=3), "noise")))


def test_transform_crops_and_records_micro_conditioning():
    image = Image.fromarray(np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3))
    pixels, crop = ImageTransform(20, "center")(image)
    assert pixels.shape == (3, 20, 20) and pixels.min() >= -1 and pixels.max() <= 1
    assert crop.original_size == (40, 60) and crop.crop_top_left == (0, 5)
    crops = {
        ImageTransform(20, "random")(image, torch.Generator().manual_seed(seed))[1].crop_top_left for seed in range(20)
    }
    assert len(crops) > 3 and all(top == 0 and 0 <= left <= 10 for top, left in crops)


def test_resize_is_the_official_one():
    """torchvision's Resize(20) on a PIL image: bilinear, the longer side truncated (61 * 20 / 37 = 32.97 -> 32)."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 61, 3), dtype=np.uint8))
    pixels, crop = ImageTransform(20, "center")(image)
    expected = np.asarray(image.resize((32, 20), Image.Resampling.BILINEAR), dtype=np.float32)[:, 6:26]
    assert crop.crop_top_left == (0, 6)
    torch.testing.assert_close(pixels, torch.from_numpy(expected).permute(2, 0, 1) / 127.5 - 1)


def test_defaults_follow_the_official_training_recipe(world, tmp_path):
    """Adapter scale 1.0 while training (0.5 only for validation images), no clipping, latents from a float32 VAE."""
    from iqa_adapter.training.trainer import Trainer

    settings = config(
        world,
        tmp_path / "run",
        max_steps=2,
        mixed_precision="bf16",
        validation_every=1,
        validation_prompts=["a picture number 1"],
        validation_steps=1,
    )
    assert settings.max_grad_norm is None and settings.train_scale == 1.0
    trainer = Trainer(settings)
    scales = {
        tuple(processor.scale)
        for processor in trainer.pipe.unet.attn_processors.values()
        if hasattr(processor, "to_k_ip")
    }
    assert scales == {(1.0,)} and trainer.pipe.vae.dtype == torch.float32 and trainer.pipe.unet.dtype == torch.bfloat16
    result = trainer.run()  # validates (at the inference scale) after each step
    assert {tuple(p.scale) for p in trainer.pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")} <= {(1.0,)}
    exported = IQAAdapter.from_pretrained(result.adapter_dir).config
    assert exported.train_scale == 1.0
    assert (tmp_path / "run" / "validation" / "step_00000002.png").is_file()
    # the recipe a model card tells, with local folders by their names only
    recipe = exported.extra["training"]
    assert (recipe["base"], recipe["data"], recipe["steps"], recipe["batch_size"]) == ("sd", "data", 2, 4)
    assert recipe["drop_rates"] == {"quality": 0.01, "text": 0.05, "both": 0.01} and recipe["mixed_precision"] == "bf16"
    assert recipe["images"] == len(trainer.samples)


def test_condition_drops_follow_the_official_rates(world, tmp_path):
    settings = config(world, tmp_path, drop_quality=0.1, drop_text=0.2, drop_both=0.05)
    draws = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    quality, text = condition_drops(draws, settings)
    only_quality, only_text, both = (
        (quality & ~text).float().mean(),
        (text & ~quality).float().mean(),
        (quality & text).float().mean(),
    )
    assert abs(only_quality - 0.1) < 0.005 and abs(only_text - 0.2) < 0.005 and abs(both - 0.05) < 0.005


def test_learning_rate_schedules(world, tmp_path):
    cosine = config(world, tmp_path, lr_schedule="cosine", warmup_steps=2, max_steps=12)
    assert [learning_rate_factor(cosine, step) for step in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert learning_rate_factor(cosine, 7) == pytest.approx(0.5) and learning_rate_factor(cosine, 12) == pytest.approx(
        0
    )
    linear = replace(cosine, lr_schedule="linear")
    assert learning_rate_factor(linear, 7) == pytest.approx(0.5)
    assert learning_rate_factor(replace(cosine, lr_schedule="constant"), 11) == 1.0


@pytest.mark.parametrize("arch", ["sd", "sd_v", "sdxl"])
def test_targets_and_text_conditions(world, arch):
    base = FrozenBase(load_pipeline_for_training(str(world / arch), torch.device("cpu"), torch.float32))
    latents, noise = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    timesteps = torch.tensor([10, 900])
    target = base.target(latents, noise, timesteps)
    if arch == "sd_v":
        alpha = base.noise_scheduler.alphas_cumprod[timesteps].sqrt().view(-1, 1, 1, 1)
        sigma = (1 - base.noise_scheduler.alphas_cumprod[timesteps]).sqrt().view(-1, 1, 1, 1)
        torch.testing.assert_close(target, alpha * noise - sigma * latents)
    else:
        assert torch.equal(target, noise)
    text = base.encode_text(["a", "b"])
    unconditional = base.unconditional_text(2)
    assert (text.pooled is not None) == (arch == "sdxl") == base.is_sdxl
    reference = base.pipe.encode_prompt("x", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    torch.testing.assert_close(unconditional.prompt_embeds[0], reference[1][0])  # what generation uses


# ---------------------------------------------------------------- whole runs


def test_training_changes_only_the_adapter_and_exports_it(world, tmp_path):
    settings = config(
        world, tmp_path / "run", validation_every=3, validation_prompts=["a picture number 1"], validation_steps=2
    )
    before = {name: value.clone() for name, value in tiny_sd_pipeline(seed=0).unet.state_dict().items()}
    result = train(settings)
    assert result.steps == 3 and result.adapter_dir == tmp_path / "run" / "adapter" and np.isfinite(result.final_loss)

    adapter = IQAAdapter.from_pretrained(result.adapter_dir)
    weights = adapter_weights(result.adapter_dir)
    assert all(name.startswith(("projection.", "kv.")) for name in weights)  # the adapter only, never the UNet
    pipe = tiny_sd_pipeline(seed=0)
    assert all(torch.equal(before[name], value) for name, value in pipe.unet.state_dict().items())
    initial = IQAAdapter.for_unet(pipe, adapter.config.metrics, seed=0)
    layer = adapter.config.layers[0]
    text_key = _base_layer(pipe.unet.get_submodule(layer.name).to_k).weight
    assert torch.equal(initial.kv[0].to_k.weight, text_key)  # K/V start from the text K/V ...
    assert not torch.equal(adapter.kv[0].to_k.weight, text_key)  # ... and training moved them

    # statistics of the training set: the scored, readable-or-not samples (013 has no score)
    scores = pd.read_parquet(world / "scores" / "scores.parquet")
    noise = adapter.config.metrics[0]
    assert noise.name == "noise" and noise.higher_is_better is False  # direction from the metric registry
    assert noise.mean == pytest.approx(scores["noise"].mean()) and noise.std == pytest.approx(
        scores["noise"].std(ddof=0)
    )
    assert noise.percentiles[50.0] == pytest.approx(scores["noise"].median())

    out = tmp_path / "run"
    log = pd.read_csv(out / "logs" / "train_log.csv")
    assert log["step"].tolist() == [1, 2, 3] and log["loss"].notna().all()
    assert (out / "validation" / "step_00000003.png").is_file()
    assert json.loads((out / "train_config.json").read_text())["metrics"] == ["noise", "colorfulness"]
    assert result.skipped_images >= 1  # the corrupt image was met, skipped and counted ...
    assert result.samples + result.skipped_images == 3 * 4  # ... and every other draw was used
    assert result.without_scores == 1  # image 013
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_ema_weights_are_exported(world, tmp_path):
    result = train(config(world, tmp_path / "ema", max_steps=1, ema_decay=0.9))
    trained = adapter_weights(tmp_path / "ema" / "checkpoints" / "step_00000001" / "adapter")
    exported = adapter_weights(result.adapter_dir)
    initial = IQAAdapter.for_unet(
        tiny_sd_pipeline(seed=0), IQAAdapter.from_pretrained(result.adapter_dir).config.metrics, seed=0
    ).state_dict()
    for name, value in exported.items():
        torch.testing.assert_close(value, 0.9 * initial[name] + 0.1 * trained[name])


def test_sdxl_training_with_accumulation_and_bf16(world, tmp_path):
    result = train(
        config(
            world,
            tmp_path / "xl",
            base=str(world / "sdxl"),
            batch_size=2,
            gradient_accumulation=2,
            mixed_precision="bf16",
            gradient_checkpointing=True,
            max_steps=2,
        )
    )
    assert np.isfinite(result.final_loss)
    assert all(value.dtype == torch.float32 for value in adapter_weights(result.adapter_dir).values())


def test_v_prediction_and_mlp_projection_run(world, tmp_path):
    result = train(
        config(world, tmp_path / "v", base=str(world / "sd_v"), projection="mlp", encoding_frequencies=2, max_steps=2)
    )
    adapter = IQAAdapter.from_pretrained(result.adapter_dir)
    assert adapter.config.projection == "mlp" and adapter.config.encoding_frequencies == 2


def test_gradient_checkpointing_gives_the_same_result(world, tmp_path):
    plain = train(config(world, tmp_path / "plain", max_steps=2))
    checkpointed = train(config(world, tmp_path / "checkpointed", max_steps=2, gradient_checkpointing=True))
    assert_same_weights(plain.adapter_dir, checkpointed.adapter_dir, atol=1e-6)


def test_cache_is_built_once_reused_and_matches_on_the_fly_training(world, tmp_path):
    cache = tmp_path / "cache"
    readable = str(world / "scores_readable")  # the same sample list with and without the cache
    # a large Adam epsilon makes the update smooth in the gradient: the VAE runs on batches of other sizes in the
    # two runs, and Adam's sign-like first steps would turn that float noise in near-zero gradients into lr-sized
    # differences (as in the DDP test)
    plain = train(config(world, tmp_path / "plain", scores=readable, adam_epsilon=1e-3))
    cached = train(
        config(
            world, tmp_path / "cached", scores=readable, cache_dir=str(cache), cache_dtype="float32", adam_epsilon=1e-3
        )
    )
    assert_same_weights(plain.adapter_dir, cached.adapter_dir, atol=1e-5)
    shards = sorted((cache / "shards").glob("shard_*.safetensors"))
    assert shards and cached.skipped_images == 1  # the corrupt image, left out of the cache and counted
    mtimes = [path.stat().st_mtime_ns for path in shards]
    again = train(
        config(world, tmp_path / "again", cache_dir=str(cache), cache_dtype="float32", metrics=["colorfulness"])
    )
    assert [path.stat().st_mtime_ns for path in shards] == mtimes  # reused, whatever the metrics
    assert IQAAdapter.from_pretrained(again.adapter_dir).metric_names == ["colorfulness"]
    with pytest.raises(ValueError, match="random crops"):
        train(config(world, tmp_path / "random", cache_dir=str(cache), crop="random"))


def test_cache_command_builds_the_cache_that_train_then_reads(world, tmp_path, capsys):
    """`iqa-adapter cache` first (the toy world's build does so, so that its adapters can train side by side): the
    training run finds the cache finished, leaves its shards alone, and learns what it learns from its own cache."""
    from iqa_adapter.cli import main

    cache = tmp_path / "cache"
    arguments = ["--base", str(world / "sd"), "--data", str(world / "data"), "--resolution", "32"]
    assert main(["cache", *arguments, "--cache-dir", str(cache), "--workers", "0", "--no-progress"]) == 0
    assert f"--cache-dir {cache}" in capsys.readouterr().out
    shards = sorted((cache / "shards").glob("shard_*.safetensors"))
    mtimes = [path.stat().st_mtime_ns for path in shards]
    readable = str(world / "scores_readable")
    prebuilt = train(config(world, tmp_path / "prebuilt", scores=readable, cache_dir=str(cache)))
    assert shards and [path.stat().st_mtime_ns for path in shards] == mtimes
    own = train(config(world, tmp_path / "own", scores=readable, cache_dir=str(tmp_path / "own_cache")))
    assert_same_weights(prebuilt.adapter_dir, own.adapter_dir, atol=0)
    with pytest.raises(ValueError, match="resolution: 32 -> 16"):  # a cache of another resolution is refused
        train(config(world, tmp_path / "other", scores=readable, cache_dir=str(cache), resolution=16))


def test_cache_command_runs_under_accelerate_launch(world, tmp_path):
    """`accelerate launch -m iqa_adapter cache` on 2 processes (each on its own device, the CPU here) writes the
    cache one process writes."""
    arguments = ["--base", str(world / "sd"), "--data", str(world / "data"), "--resolution", "32", "--workers", "0"]
    arguments += ["--cache-dtype", "float32", "--no-progress"]
    single = tmp_path / "single"
    from iqa_adapter.cli import main

    assert main(["cache", *arguments, "--cache-dir", str(single)]) == 0
    finished = launch_two_cpu_processes(
        ["-m", "iqa_adapter", "cache", *arguments, "--cache-dir", str(tmp_path / "two")], timeout=600
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    shards = sorted(path.name for path in (single / "shards").glob("*.safetensors"))
    assert shards and shards == sorted(path.name for path in (tmp_path / "two" / "shards").glob("*.safetensors"))
    for name in shards:
        one, two = load_file(single / "shards" / name), load_file(tmp_path / "two" / "shards" / name)
        assert one.keys() == two.keys()
        for key in one:
            torch.testing.assert_close(one[key], two[key], rtol=0, atol=1e-5)


def test_cache_build_resumes_only_missing_shards(world, tmp_path):
    from iqa_adapter.training.cache import TrainingCache, build_cache

    base = FrozenBase(load_pipeline_for_training(str(world / "sd"), torch.device("cpu"), torch.float32))
    arguments = dict(resolution=32, shard_size=4, num_workers=0, progress=False)
    build_cache(tmp_path, str(world / "data"), base, "sd", **arguments)
    shards = sorted((tmp_path / "shards").glob("*.safetensors"))
    assert len(shards) == 4  # 15 entries in shards of 4
    shards[1].unlink()
    mtimes = {path.name: path.stat().st_mtime_ns for path in shards if path.exists()}
    build_cache(tmp_path, str(world / "data"), base, "sd", **arguments)
    assert {path.name: path.stat().st_mtime_ns for path in shards if path.name in mtimes} == mtimes
    cache = TrainingCache(tmp_path, base_name="sd", data=str(world / "data"), resolution=32)
    assert len(cache) == NUM_IMAGES and [key for key, _, _ in cache.skipped] == [CORRUPT_KEY]
    with pytest.raises(ValueError, match="another run"):
        TrainingCache(tmp_path, base_name="sd", data=str(world / "data"), resolution=64)


def test_second_stage_starts_from_an_adapter(world, tmp_path):
    first = train(config(world, tmp_path / "stage1"))
    frozen = train(
        config(
            world,
            tmp_path / "stage2",
            init_adapter=str(first.adapter_dir),
            stats_from="init",
            learning_rate=0.0,
            weight_decay=0.0,
            resolution=40,
        )
    )
    assert_same_weights(first.adapter_dir, frozen.adapter_dir)  # lr 0: the stage-1 weights, carried over
    assert (
        IQAAdapter.from_pretrained(frozen.adapter_dir).config.metrics
        == IQAAdapter.from_pretrained(first.adapter_dir).config.metrics
    )
    with pytest.raises(ValueError, match="same condition"):
        train(config(world, tmp_path / "stage2b", init_adapter=str(first.adapter_dir), metrics=["colorfulness"]))


def test_run_folders_are_not_overwritten_and_resume_checks_settings(world, tmp_path):
    out = tmp_path / "run"
    train(config(world, out, max_steps=2, checkpoint_every=1))
    with pytest.raises(ValueError, match="--resume latest"):
        train(config(world, out, max_steps=2))
    with pytest.raises(ValueError, match="learning_rate"):
        train(config(world, out, max_steps=4, resume="latest", learning_rate=1e-2))
    result = train(config(world, out, max_steps=4, resume="latest", checkpoint_every=1, checkpoints_total_limit=2))
    assert result.steps == 4 and [path.name for path in list_checkpoints(out)] == ["step_00000003", "step_00000004"]
    assert pd.read_csv(out / "logs" / "train_log.csv")["step"].tolist() == [1, 2, 3, 4]


def test_the_readme_resume_workflow_works_with_relative_paths(world, tmp_path, monkeypatch):
    """train --out runs/stage1 (a folder that does not exist yet), then the same command with --resume latest."""
    from iqa_adapter.cli import main

    monkeypatch.chdir(tmp_path)
    command = [
        "train",
        "--base",
        str(world / "sd"),
        "--data",
        str(world / "data"),
        "--scores",
        str(world / "scores"),
        "--metrics",
        "noise,colorfulness",
        "--resolution",
        "32",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--checkpoint-every",
        "1",
        "--no-progress",
        "--out",
        "runs/stage1",
        "--cache-dir",
        "runs/cache",
    ]
    assert main(command + ["--max-steps", "2"]) == 0
    assert main(command + ["--max-steps", "4", "--resume", "latest"]) == 0
    assert [path.name for path in list_checkpoints(tmp_path / "runs" / "stage1")][-1] == "step_00000004"
    # a run recorded by an older version, with the relative path itself, resumes as well
    saved = tmp_path / "runs" / "stage1" / "train_config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "out": "runs/stage1", "cache_dir": "runs/cache"}))
    assert main(command + ["--max-steps", "5", "--resume", "latest"]) == 0


def test_errors_name_the_problem(world, tmp_path):
    with pytest.raises(ValueError, match="no column for sharpness"):
        train(config(world, tmp_path / "a", metrics=["sharpness"]))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(config(world, tmp_path / "b", batch_size=64))
    with pytest.raises(ValueError, match="cannot load the base model"):
        train(config(world, tmp_path / "c", base=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="drop rates"):
        config(world, tmp_path, drop_quality=0.7, drop_text=0.5)


def cli_command(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "iqa_adapter",
        "train",
        "--base",
        str(world / "sd"),
        "--data",
        str(world / "data"),
        "--scores",
        str(world / "scores"),
        "--metrics",
        "noise,colorfulness",
        "--out",
        str(out),
        "--resolution",
        "32",
        "--workers",
        "0",
        "--learning-rate",
        "1e-3",
        "--no-progress",
        *extra,
    ]


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(world, tmp_path):
    steps = [
        "--max-steps",
        "24",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "4",
        "--checkpoints-total-limit",
        "0",
        "--log-every",
        "1",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, *cli_command(world, tmp_path / "straight", *steps)],
        check=True,
        env=environment,
        capture_output=True,
    )

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, *cli_command(world, out, *steps)],
        env=environment,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not list_checkpoints(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list_checkpoints(out) and not (out / "adapter").exists(), process.stderr.read().decode()[-2000:]

    subprocess.run(
        [sys.executable, *cli_command(world, out, *steps, "--resume", "latest")],
        check=True,
        env=environment,
        capture_output=True,
    )
    assert_same_weights(tmp_path / "straight" / "adapter", out / "adapter", atol=1e-6)
    assert pd.read_csv(out / "logs" / "train_log.csv")["step"].tolist() == list(range(1, 25))  # no step twice


def test_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    # Adam's first steps move every weight by about +-lr whatever the size of its gradient, so a gradient that is
    # nearly zero flips sign under the float noise of a different reduction order and the weights differ by 2 lr.
    # A large epsilon makes the update smooth in the gradient, so the comparison measures the data split and the
    # gradient averaging, not that amplification.
    steps = ["--max-steps", "3", "--checkpoint-every", "100", "--adam-epsilon", "1e-3"]
    single = train(config(world, tmp_path / "single", batch_size=4, max_steps=3, adam_epsilon=1e-3))
    finished = launch_two_cpu_processes(
        cli_command(world, tmp_path / "multi", *steps, "--batch-size", "2"), timeout=600
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_weights(single.adapter_dir, tmp_path / "multi" / "adapter", atol=1e-5)
