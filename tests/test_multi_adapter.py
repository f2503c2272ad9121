"""Several adapters in one pipeline: two IQA-Adapters, and an IQA-Adapter beside a diffusers IP-Adapter (image
prompt) loaded with ``pipe.load_ip_adapter``, on tiny SD and SDXL architectures."""

import numpy as np
import pytest
import torch
from diffusers.callbacks import IPAdapterScaleCutoffCallback
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from conftest import run, two_metrics
from iqa_adapter import IQAAdapter, MetricStats, QualityTargetError
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.generation import generate, image_prompt_embeds
from iqa_adapter.slots import ScaleCutoffCallback
from test_convert import official_checkpoint

NOISE_AND_COLOUR = [
    MetricStats("noise", mean=10.0, std=2.0, percentiles={1.0: 4.0, 50.0: 10.0, 99.0: 16.0}, higher_is_better=False),
    MetricStats("colour", mean=0.3, std=0.1, percentiles={1.0: 0.05, 50.0: 0.3, 99.0: 0.6}),
]


def perturbed(pipe, metrics, seed: int) -> IQAAdapter:
    """A fresh adapter whose quality K/V differ from the text K/V, so that its tokens matter."""
    made = IQAAdapter.for_unet(pipe, metrics, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kv in made.kv:
            kv.to_k.weight.add_(0.05 * torch.randn(kv.to_k.weight.shape, generator=generator))
            kv.to_v.weight.add_(0.05 * torch.randn(kv.to_v.weight.shape, generator=generator))
    return made


@pytest.fixture
def pair(pipe):
    """Two adapters on different metrics (detached again after the test)."""
    made = perturbed(pipe, two_metrics(), seed=1), perturbed(pipe, NOISE_AND_COLOUR, seed=2)
    yield made
    for adapter in reversed(made):
        if adapter.is_attached:
            adapter.detach()


def first_cross_attention_output(pipe, embeds) -> torch.Tensor:
    """The output of the UNet's first cross-attention layer in one denoising step: its input does not depend on
    the adapters (nothing before it does), so what the adapters add there is exactly their attention term."""
    layer = next(module for name, module in pipe.unet.named_modules() if name.endswith("attn2"))
    seen = []
    hook = layer.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        run(pipe, embeds, steps=1)
    finally:
        hook.remove()
    return seen[0]


def test_two_adapters_at_scale_zero_equal_the_base_and_detaching_one_leaves_the_other(pipe, pair):
    first, second = pair
    before = dict(pipe.unet.attn_processors)
    base = run(pipe)
    first.attach(pipe, scale=0.0)
    second.attach(pipe, scale=0.0)
    assert (first.slot, second.slot) == (0, 1)
    embeds = first.embeds(first.z_scores({"sharp": "p99", "aes": "p1"})) + second.embeds(
        second.z_scores({"noise": "p99", "colour": "p50"})
    )
    assert torch.equal(run(pipe, embeds), base)
    second.set_scale(0.6)  # one slot's scale, the other's stays 0
    scales = {tuple(p.scale) for p in pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)}
    assert scales == {(0.0, 0.6)}
    both = run(pipe, embeds)
    first.detach()
    assert second.slot == 0
    alone = run(pipe, embeds[1:])
    assert torch.equal(both, alone)  # first at scale 0 contributed nothing; second works alone in its new slot
    with pytest.raises(ValueError, match="got 2 ip_adapter_image_embeds for its 1 IP-Adapter slots"):
        run(pipe, embeds)
    second.detach()
    after = pipe.unet.attn_processors
    assert all(after[name] is before[name] for name in before) and pipe.unet.encoder_hid_proj is None
    assert torch.equal(run(pipe), base)


def test_each_adapters_contribution_is_its_single_adapter_contribution(pipe, pair):
    """In one attention layer, Attn(Q, K_text, V_text) + s1 Attn(Q, K_1, V_1) + s2 Attn(Q, K_2, V_2): with both
    attached the layer adds the sum of what each adds alone."""
    first, second = pair
    embeds_1 = first.embeds(first.z_scores({"sharp": "p99", "aes": "p25"}))
    embeds_2 = second.embeds(second.z_scores({"noise": "p1", "colour": "p99"}))
    base = first_cross_attention_output(pipe, None)
    first.attach(pipe, scale=0.7)
    only_first = first_cross_attention_output(pipe, embeds_1)
    first.detach()
    second.attach(pipe, scale=0.4)
    only_second = first_cross_attention_output(pipe, embeds_2)
    first.attach(pipe, scale=0.7)  # now the second slot
    assert (second.slot, first.slot) == (0, 1)
    both = first_cross_attention_output(pipe, embeds_2 + embeds_1)
    torch.testing.assert_close(both - base, (only_first - base) + (only_second - base), rtol=0, atol=1e-5)
    assert (only_first - base).abs().max() > 1e-3 and (only_second - base).abs().max() > 1e-3


def test_per_image_vectors_of_two_adapters_never_mix(pipe, pair):
    """A batched sweep over both adapters' metrics equals generating every image alone (diffusers issue 9813)."""
    first, second = pair
    qualities = [
        {"sharp": sharp, "aes": "p50", "noise": noise, "colour": "p50"}
        for sharp, noise in (("p1", "p99"), ("p99", "p1"), ("p50", "p50"))
    ]
    kwargs = dict(seed=3, steps=2, num_images=2, progress=False, output_type="np", scale=[0.7, 0.5])
    batched = generate(pipe, [first, second], ["a red circle", "a blue square"], qualities, batch_size=12, **kwargs)
    assert len(batched) == 12 and not first.is_attached and not second.is_attached
    for result in batched:
        single = generate(
            pipe,
            [first, second],
            result.settings["prompt"],
            [dict(result.settings["quality"])],
            **{**kwargs, "seed": result.settings["seed"], "num_images": 1},
        )[0]
        assert result.settings == single.settings
        assert np.abs(result.image - single.image).max() < 1e-4
    settings = batched[0].settings
    assert settings["scale"] == [0.7, 0.5] and settings["quality"]["noise"] == "p99"
    assert settings["quality_z"][1]["noise"] == pytest.approx(-3.0)  # lower is better: p99 quality = raw p1
    images = [torch.as_tensor(r.image) for r in batched]
    assert (images[0] - images[4]).abs().max() > 1e-3  # paired images differ through the targets


def test_generate_names_what_is_wrong_with_several_adapters(sd_pipe):
    first, second = perturbed(sd_pipe, two_metrics(), seed=1), perturbed(sd_pipe, NOISE_AND_COLOUR, seed=2)
    targets = {"sharp": "p99", "aes": "p99", "noise": "p50", "colour": "p50"}
    with pytest.raises(
        QualityTargetError,
        match="no adapter is conditioned on blur; the adapters are conditioned on: aes, colour, noise, sharp",
    ):
        generate(sd_pipe, [first, second], "x", {**targets, "blur": "p1"}, steps=1, progress=False)
    with pytest.raises(ValueError, match="scale gives 3 values for 2 adapters"):
        generate(sd_pipe, [first, second], "x", targets, scale=[0.1, 0.2, 0.3], steps=1, progress=False)
    second.attach(sd_pipe)
    try:
        with pytest.raises(
            ValueError,
            match=r"1 more IQA-Adapter\(s\) are attached to this pipeline \(on noise, "
            r"colour\): pass them too",
        ):
            generate(sd_pipe, first, "x", {"sharp": "p99", "aes": "p99"}, steps=1, progress=False)
        assert not first.is_attached and second.slot == 0  # the failed call left the pipeline as it was
    finally:
        second.detach()


def test_step_cutoff_callback_switches_every_slot_off(sd_pipe):
    """diffusers' IPAdapterScaleCutoffCallback refuses two slots (set_ip_adapter_scale(0.0) checks the count before
    broadcasting); ScaleCutoffCallback is the same callback for any number of slots."""
    first, second = perturbed(sd_pipe, two_metrics(), seed=1), perturbed(sd_pipe, NOISE_AND_COLOUR, seed=2)
    first.attach(sd_pipe)
    second.attach(sd_pipe, scale=0.8)
    try:
        embeds = first.embeds(first.z_scores({"sharp": "p99", "aes": "p99"})) + second.embeds(
            second.z_scores({"noise": "p99", "colour": "p99"})
        )
        with pytest.raises(ValueError, match="Cannot assign 1 scale_configs to 2 IP-Adapter"):
            run(sd_pipe, embeds, steps=4, callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=0.5))
        first.set_scale(0.5)
        run(sd_pipe, embeds, steps=4, callback_on_step_end=ScaleCutoffCallback(cutoff_step_ratio=0.5))
        assert {
            tuple(p.scale) for p in sd_pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)
        } == {(0.0, 0.0)}
    finally:
        second.detach()
        first.detach()


@pytest.fixture
def image_prompt_pipe():
    """A tiny SD pipeline with a diffusers IP-Adapter (image prompt, 4 tokens, tiny CLIP image encoder) loaded
    through ``pipe.load_ip_adapter``."""
    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    image_proj, ip_adapter = official_checkpoint(pipe.unet, feature_dim=16, num_tokens=4, seed=5)
    pipe.load_ip_adapter(
        {"image_proj": image_proj, "ip_adapter": ip_adapter},
        subfolder=None,
        weight_name=None,
        image_encoder_folder=None,
    )
    return pipe


def test_an_iqa_adapter_beside_a_diffusers_ip_adapter(image_prompt_pipe):
    pipe = image_prompt_pipe
    picture = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    image_embeds = pipe.prepare_ip_adapter_image_embeds([picture], None, "cpu", 1, True)
    base = run(pipe, image_embeds)
    ip_processors = dict(pipe.unet.attn_processors)
    adapter = perturbed(pipe, two_metrics(), seed=1)
    adapter.attach(pipe, scale=0.0)
    assert adapter.slot == 1
    quality = adapter.embeds(adapter.z_scores({"sharp": "p99", "aes": "p99"}))
    assert torch.equal(run(pipe, image_embeds + quality), base)  # lambda = 0: the image-prompt model exactly
    ours = image_prompt_embeds(pipe, [picture])  # what diffusers' prepare_ip_adapter_image_embeds now refuses
    assert len(ours) == 1 and torch.equal(ours[0], image_embeds[0])
    adapter.set_scale(0.5)
    results = generate(
        pipe,
        adapter,
        "a red circle",
        {"sharp": "p99", "aes": "p99"},
        image_prompts=[picture],
        steps=2,
        progress=False,
        output_type="latent",
    )
    assert (results[0].image - base[0]).abs().max() > 1e-3
    with pytest.raises(
        ValueError, match="has 1 IP-Adapter\\(s\\) loaded with pipe.load_ip_adapter: pass image_prompts"
    ):
        generate(pipe, adapter, "x", {"sharp": "p99", "aes": "p99"}, steps=1, progress=False)
    adapter.detach()
    after = pipe.unet.attn_processors
    assert all(after[name] is ip_processors[name] for name in ip_processors)  # diffusers' IP-Adapter as loaded
    assert torch.equal(run(pipe, image_embeds), base)


def test_two_adapters_beside_a_lora_and_in_a_controlnet_pipeline():
    """A LoRA on the attention projections stays active under two adapters (both at scale 0: the LoRA model bit for
    bit), and a ControlNet pipeline built on the same UNet runs them too."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
    from peft import LoraConfig

    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(0)  # made from the plain UNet, as a pretrained ControlNet would be
    controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    control_pipe = StableDiffusionControlNetPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        controlnet=controlnet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    control_pipe.set_progress_bar_config(disable=True)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with_lora = run(pipe)
    first, second = perturbed(pipe, two_metrics(), seed=1), perturbed(pipe, NOISE_AND_COLOUR, seed=2)
    embeds = first.embeds(first.z_scores({"sharp": "p99", "aes": "p99"})) + second.embeds(
        second.z_scores({"noise": "p99", "colour": "p1"})
    )
    first.attach(pipe, scale=0.0)
    second.attach(pipe, scale=0.0)
    assert torch.equal(run(pipe, embeds), with_lora)
    second.set_scale(0.5)
    assert (run(pipe, embeds) - with_lora).abs().max() > 1e-4

    image = torch.rand(1, 3, 32, 32)
    second.set_scale(0.0)
    base = run(control_pipe, embeds, image=image, height=32, width=32)
    second.set_scale(0.5)
    assert (run(control_pipe, embeds, image=image, height=32, width=32) - base).abs().max() > 1e-4
    second.detach()
    first.detach()
    assert torch.equal(run(pipe), with_lora)


def test_the_order_adapters_are_given_in_does_not_matter(sd_pipe):
    """generate lays the embeds out in slot order (attach order), whatever order the adapters are passed in."""
    first, second = perturbed(sd_pipe, two_metrics(), seed=1), perturbed(sd_pipe, NOISE_AND_COLOUR, seed=2)
    targets = {"sharp": "p99", "aes": "p1", "noise": "p1", "colour": "p99"}
    first.attach(sd_pipe, scale=0.6)
    second.attach(sd_pipe, scale=0.4)
    try:
        kwargs = dict(steps=2, progress=False, output_type="latent")
        in_order = generate(sd_pipe, [first, second], "a red circle", targets, **kwargs)[0]
        reversed_order = generate(sd_pipe, [second, first], "a red circle", targets, **kwargs)[0]
    finally:
        second.detach()
        first.detach()
    assert torch.equal(in_order.image, reversed_order.image)
