import json

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForImage2Image
from PIL import Image
from torch import nn

from iqa_adapter import IQAAdapter
from iqa_adapter.cli import main
from iqa_adapter.generation import generate
from iqa_adapter.metrics import QualityMetric, register_metric
from iqa_adapter.reference import ReferenceEncoder, ReferenceSpec, pool
from iqa_adapter.training import TrainConfig, train
from test_training import world  # noqa: F401  (the tiny bases and captioned images)


@register_metric
class TinyConvIQA(QualityMetric):
    """A small random conv net (test metric): scores and exposes named features."""

    name = "test-conv-iqa"
    differentiable = True

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 6, 3, stride=2, padding=1))
        for parameter in self.body.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.3

    def forward(self, images):
        return self.body(images).mean(dim=(1, 2, 3))

    def features(self, images):
        maps = self.body(images)
        return {"tokens": maps.flatten(2).transpose(1, 2), "pooled": maps.mean(dim=(2, 3))}


def image(seed: int, noise: float, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(
        128 + 60 * np.sin(np.arange(size) / 3)[None, :, None] + rng.normal(0, noise, (size, size, 3)), 0, 255
    )
    return Image.fromarray(pixels.astype(np.uint8))


def test_spec_parsing_and_pooling():
    spec = ReferenceSpec.parse("loda:/ckpt/loda:distortion_tokens, cls")
    assert spec.metric == "loda:/ckpt/loda" and spec.layers == ("distortion_tokens", "cls")
    assert str(spec) == "loda:/ckpt/loda:distortion_tokens,cls"
    with pytest.raises(ValueError, match="<metric>:<layer>"):
        ReferenceSpec.parse("loda")
    assert pool(torch.ones(2, 5, 3)).shape == (2, 3) and pool(torch.ones(2, 3, 4, 4)).shape == (2, 3)


def test_encoder_reads_named_features_and_hooked_modules():
    named = ReferenceEncoder.from_spec("test-conv-iqa:tokens,pooled")
    hooked = ReferenceEncoder.from_spec("test-conv-iqa:body.2")
    assert named.feature_dim == 12 and hooked.feature_dim == 6
    images = torch.rand(2, 3, 32, 32)
    features = named.encode(images)
    torch.testing.assert_close(features[:, :6], features[:, 6:])  # mean of the tokens == mean of the map
    torch.testing.assert_close(hooked.encode(images), features[:, 6:])  # the hook sees the same map
    with pytest.raises(ValueError, match="has no layer 'nope'"):
        ReferenceEncoder.from_spec("test-conv-iqa:nope")


def test_sixteen_bit_references_are_read_at_full_precision():
    encoder = ReferenceEncoder.from_spec("test-conv-iqa:pooled")
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    expected = torch.from_numpy(ramp / 65535).float().expand(3, -1, -1)[None]
    torch.testing.assert_close(encoder.encode([Image.fromarray(ramp)]), encoder.encode(expected))


def test_reference_adapter_trains_round_trips_and_generates(world, tmp_path):  # noqa: F811
    config = TrainConfig(
        base=str(world / "sd"),
        data=str(world / "data"),
        scores=None,
        metrics=[],
        reference_features="test-conv-iqa:body.2",
        out=str(tmp_path / "run"),
        resolution=32,
        batch_size=4,
        max_steps=2,
        num_workers=0,
        progress=False,
        validation_every=2,
        validation_prompts=["a picture number 1"],
        validation_steps=2,
    )
    result = train(config)
    assert (tmp_path / "run" / "validation" / "step_00000002.png").is_file()
    adapter = IQAAdapter.from_pretrained(result.adapter_dir)
    assert adapter.config.condition == "reference"
    assert adapter.config.reference == {"metric": "test-conv-iqa", "layers": ["body.2"], "feature_dim": 6}
    assert not torch.equal(adapter.feature_std, torch.ones(6))  # standardised with the training images

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(world / "sd")
    pipe.set_progress_bar_config(disable=True)
    clean, noisy = image(0, 2.0), image(0, 60.0)
    common = dict(steps=2, progress=False)
    plain = generate(pipe, adapter, "a picture", references=[clean], **common)
    pushed = generate(pipe, adapter, "a picture", references=[clean], negative_reference=noisy, **common)
    other = generate(pipe, adapter, "a picture", references=[noisy], **common)
    pixels = [np.asarray(result[0].image, dtype=np.float32) for result in (plain, pushed, other)]
    assert np.abs(pixels[0] - pixels[1]).max() > 0  # the negative branch is used ...
    assert np.abs(pixels[0] - pixels[2]).max() > 0  # ... and the reference matters
    assert plain[0].settings["reference_index"] == 0 and pushed[0].settings["negative_reference"] is True

    embeds = adapter.reference_embeds(torch.zeros(6), torch.ones(6))[0]
    assert not torch.equal(embeds[0], embeds[1]) and not torch.equal(embeds[0], torch.zeros_like(embeds[0]))
    dropped = adapter.reference_embeds(torch.zeros(6))[0]
    assert torch.equal(dropped[0], torch.zeros_like(dropped[0]))
    with pytest.raises(ValueError, match="reference images"):
        generate(pipe, adapter, "a picture", {"noise": "p50"}, **common)

    img2img = AutoPipelineForImage2Image.from_pipe(pipe)
    result = generate(img2img, adapter, "a picture", references=[noisy], image=clean, strength=0.5, **common)
    assert result[0].image.size == clean.size


def test_cli_reference_generation_and_img2img(world, tmp_path):  # noqa: F811
    config = TrainConfig(
        base=str(world / "sd"),
        data=str(world / "data"),
        scores=None,
        metrics=[],
        reference_features="test-conv-iqa:pooled",
        out=str(tmp_path / "run"),
        resolution=32,
        batch_size=4,
        max_steps=1,
        num_workers=0,
        progress=False,
    )
    adapter_dir = train(config).adapter_dir
    image(1, 40.0).save(tmp_path / "ref.png")
    image(2, 1.0).save(tmp_path / "clean.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--base",
                str(world / "sd"),
                "--adapter",
                str(adapter_dir),
                "--prompt",
                "a picture",
                "--reference",
                str(tmp_path / "ref.png"),
                "--negative-reference",
                str(tmp_path / "clean.png"),
                "--init-image",
                str(tmp_path / "clean.png"),
                "--strength",
                "0.5",
                "--steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    sidecar = json.loads((out / "0000.json").read_text())
    assert sidecar["reference_files"] == [str(tmp_path / "ref.png")] and sidecar["strength"] == 0.5
    assert (
        main(
            [
                "generate",
                "--base",
                str(world / "sd"),
                "--adapter",
                str(adapter_dir),
                "--prompt",
                "x",
                "--quality",
                "noise=p50",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_relative_metric_paths_resolve_against_the_adapter_folder(tmp_path):
    from iqa_adapter.metrics.registry import resolve_metric_path

    (tmp_path / "loda").mkdir()
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    assert resolve_metric_path("loda:../loda", adapter_dir) == f"loda:{(tmp_path / 'loda').resolve()}"
    assert resolve_metric_path("loda:../missing", adapter_dir) == "loda:../missing"
    assert resolve_metric_path("sharpness", adapter_dir) == "sharpness"
