import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

from iqa_adapter.toy.base_model import PIPELINE_DIR, Stage, ToyBaseConfig, run_stage, train_base_model
from iqa_adapter.toy.scenes import render_scene, scene_for
from iqa_adapter.toy.tokenizer import toy_tokenizer

MINIATURE = ToyBaseConfig(
    vae_channels=(8, 8),
    unet_channels=(8, 16),
    attention_heads=2,
    text_width=16,
    text_layers=1,
    vae_steps=2,
    vae_batch_size=4,
    unet_steps=3,
    unet_batch_size=4,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    scenes = [scene_for(0, index) for index in range(8)]
    images = torch.from_numpy(np.stack([render_scene(scene) for scene in scenes])).permute(0, 3, 1, 2).contiguous()
    out = tmp_path_factory.mktemp("base")
    pipe = train_base_model(images, [scene.caption for scene in scenes], out, MINIATURE, progress=False)
    return out, pipe, images, [scene.caption for scene in scenes]


def test_the_saved_pipeline_loads_with_plain_diffusers_and_generates(trained):
    out, _, _, _ = trained
    pipe = StableDiffusionPipeline.from_pretrained(out / PIPELINE_DIR)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.tokenizer.get_vocab() == toy_tokenizer().get_vocab()
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.scheduler.config.beta_schedule == "linear"
    assert any(name.endswith("attn2.processor") for name in pipe.unet.attn_processors), "cross-attention layers"
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle on a blue background",
        num_inference_steps=2,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (32, 32)
    index = json.loads((out / PIPELINE_DIR / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False


def test_storage_dtypes(trained):
    out, _, _, _ = trained
    for component, dtype in (("unet", "F16"), ("vae", "F16"), ("text_encoder", "F32")):
        path = (
            out
            / PIPELINE_DIR
            / component
            / ("model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors")
        )
        with safe_open(path, "np") as handle:
            assert {handle.get_slice(key).get_dtype() for key in handle.keys()} == {dtype}, component  # noqa: SIM118


def test_latents_have_unit_scale(trained):
    _, pipe, images, _ = trained
    scale = pipe.vae.config.scaling_factor
    with torch.no_grad():
        latents = pipe.vae.encode(images.float() / 127.5 - 1).latent_dist.mode() * scale
    assert latents.std() == pytest.approx(1.0, rel=0.1)
    assert latents.shape[-1] == 16, "the VAE downsamples by 2"


def test_a_finished_run_is_resumed_not_retrained(trained):
    out, pipe, images, captions = trained
    again = train_base_model(images, captions, out, MINIATURE, progress=False)
    for first, second in zip(pipe.unet.parameters(), again.unet.parameters()):
        assert torch.equal(first, second)
    with pytest.raises(ValueError, match="other settings"):
        train_base_model(
            images, captions, out, ToyBaseConfig(**{**MINIATURE.to_dict(), "caption_dropout": 0.5}), progress=False
        )


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path):
    data = torch.randn(64, 4)

    def stage(interrupt_at: int | None = None) -> Stage:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        calls = []

        def loss(generator):
            calls.append(1)
            if len(calls) == interrupt_at:
                raise KeyboardInterrupt
            batch = data[torch.randint(len(data), (8,), generator=generator)]
            return (model(batch) - batch.sum(dim=1, keepdim=True)).pow(2).mean()

        return Stage("test", {"model": model}, loss, steps=10, lr=0.1, warmup_steps=2, weight_decay=0.0, ema_decay=0.9)

    straight = stage()
    run_stage(straight, tmp_path / "straight.pt", seed=1, checkpoint_every=3, progress=False)
    interrupted = stage(interrupt_at=8)
    with pytest.raises(KeyboardInterrupt):
        run_stage(interrupted, tmp_path / "resumed.pt", seed=1, checkpoint_every=3, progress=False)
    resumed = stage()
    losses = run_stage(resumed, tmp_path / "resumed.pt", seed=1, checkpoint_every=3, progress=False)
    assert len(losses) == 4, "resumes after the checkpoint of step 6"
    assert torch.equal(resumed.modules["model"].weight, straight.modules["model"].weight)


def test_config_round_trip_and_unknown_keys():
    assert ToyBaseConfig.from_dict(json.loads(json.dumps(MINIATURE.to_dict()))) == MINIATURE
    with pytest.raises(ValueError, match="toy base config has unknown keys: colour"):
        ToyBaseConfig.from_dict({"colour": 1})


def test_an_iqa_adapter_attaches_to_the_toy_base(trained):
    from conftest import two_metrics
    from iqa_adapter import IQAAdapter

    _, pipe, _, _ = trained
    pipe.set_progress_bar_config(disable=True)

    def latents(**kwargs):
        return pipe(
            "a red circle",
            num_inference_steps=2,
            guidance_scale=4.0,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **kwargs,
        ).images

    base = latents()
    adapter = IQAAdapter.for_unet(pipe, two_metrics(), seed=1).attach(pipe)
    try:
        z = adapter.z_scores({"sharp": "p99", "aes": "p50"})
        adapter.set_scale(0.0)
        assert torch.equal(latents(ip_adapter_image_embeds=adapter.embeds(z)), base)
        adapter.set_scale(1.0)
        assert not torch.equal(latents(ip_adapter_image_embeds=adapter.embeds(z)), base)
    finally:
        adapter.detach()


def test_both_prediction_types_train_and_others_are_refused(tmp_path):
    scenes = [scene_for(1, index) for index in range(4)]
    images = torch.from_numpy(np.stack([render_scene(scene) for scene in scenes])).permute(0, 3, 1, 2).contiguous()
    config = ToyBaseConfig(
        **{**MINIATURE.to_dict(), "prediction_type": "epsilon", "pooled_text": False, "unet_steps": 1, "vae_steps": 1}
    )
    pipe = train_base_model(images, [scene.caption for scene in scenes], tmp_path, config, progress=False)
    assert pipe.scheduler.config.prediction_type == "epsilon" and pipe.unet.config.addition_embed_type is None
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        ToyBaseConfig(prediction_type="sample")


def test_without_top_attention_the_full_resolution_level_only_convolves():
    from conftest import two_metrics
    from iqa_adapter import IQAAdapter
    from iqa_adapter.generation import generate
    from iqa_adapter.toy.base_model import build_toy_pipeline

    full = build_toy_pipeline(ToyBaseConfig(top_attention=True))
    cheaper = build_toy_pipeline(ToyBaseConfig(top_attention=False))
    assert type(cheaper.unet.down_blocks[0]).__name__ == "DownBlock2D"
    assert type(cheaper.unet.up_blocks[-1]).__name__ == "UpBlock2D"
    cross = [name for name in cheaper.unet.attn_processors if "attn2" in name]
    assert 0 < len(cross) < len([name for name in full.unet.attn_processors if "attn2" in name])
    adapter = IQAAdapter.for_unet(cheaper, two_metrics(), seed=0)
    image = generate(
        cheaper, adapter, ["a red circle"], dict.fromkeys(adapter.metric_names, "p99"), steps=2, progress=False
    )[0].image
    assert image.size == (32, 32)


def test_a_new_pipeline_has_the_shipped_worlds_scheduler_and_builds_without_a_deprecation_warning():
    import warnings

    from iqa_adapter.toy.base_model import build_toy_pipeline
    from iqa_adapter.toy.world import shipped_world

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # diffusers' steps_offset deprecation
        pipe = build_toy_pipeline(ToyBaseConfig())
    shipped = json.loads((shipped_world().base / "scheduler" / "scheduler_config.json").read_text())
    built = dict(pipe.scheduler.config)
    assert {key: built.get(key) for key in shipped if not key.startswith("_")} == {
        key: value for key, value in shipped.items() if not key.startswith("_")
    }
