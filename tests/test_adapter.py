import re

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionControlNetPipeline
from diffusers.callbacks import IPAdapterScaleCutoffCallback
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from conftest import run, two_metrics
from iqa_adapter import AdapterMismatchError, IQAAdapter
from iqa_adapter.adapter import cross_attention_layers
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.generation import generate

P99 = {"sharp": "p99", "aes": "p99"}


def test_quality_kv_initialised_from_text_kv(pipe):
    adapter = IQAAdapter.for_unet(pipe, two_metrics(), seed=0)
    assert len(adapter.kv) == len(cross_attention_layers(pipe.unet)) > 0
    for layer, kv in zip(adapter.config.layers, adapter.kv):
        attention = pipe.unet.get_submodule(layer.name)
        assert torch.equal(kv.to_k.weight, attention.to_k.weight)
        assert torch.equal(kv.to_v.weight, attention.to_v.weight)


def test_sdxl_deep_transformer_blocks_all_get_quality_attention(sdxl_pipe):
    adapter = IQAAdapter.for_unet(sdxl_pipe, two_metrics(), seed=0)
    names = [layer.name for layer in adapter.config.layers]
    # transformer_layers_per_block=(1, 2): two transformer blocks per attention in the second down block
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn2" in names
    adapter.attach(sdxl_pipe)
    processors = sdxl_pipe.unet.attn_processors
    adapter.detach()
    for name, processor in processors.items():
        is_cross = name.removesuffix(".processor") in names
        assert isinstance(processor, IPAdapterAttnProcessor2_0) == is_cross
    assert sum(isinstance(p, IPAdapterAttnProcessor2_0) for p in processors.values()) == len(names)


def test_scale_zero_equals_base_exactly_and_positive_scale_changes_output(pipe, adapter):
    base = run(pipe)
    adapter.attach(pipe, scale=0.0)
    z = adapter.z_scores(P99)
    assert torch.equal(run(pipe, adapter.embeds(z)), base)
    adapter.set_scale(0.5)
    conditioned = run(pipe, adapter.embeds(z))
    assert (conditioned - base).abs().max() > 1e-3
    low = run(pipe, adapter.embeds(adapter.z_scores({"sharp": "p1", "aes": "p1"})))
    assert (conditioned - low).abs().max() > 1e-3  # the quality target itself matters


def test_attach_and_detach_restore_the_pipeline_exactly(pipe, adapter):
    before = dict(pipe.unet.attn_processors)
    base = run(pipe)
    adapter.attach(pipe)
    assert pipe.unet.config.encoder_hid_dim_type == "ip_image_proj"
    with pytest.raises(RuntimeError, match="already attached"):
        adapter.attach(pipe)
    adapter.detach()
    after = pipe.unet.attn_processors
    assert list(after) == list(before) and all(after[name] is before[name] for name in before)
    assert pipe.unet.encoder_hid_proj is None and pipe.unet.config.encoder_hid_dim_type is None
    assert torch.equal(run(pipe), base)
    # diffusers' own unloading works on our layers too
    adapter.attach(pipe)
    pipe.unload_ip_adapter()
    assert pipe.unet.encoder_hid_proj is None and torch.equal(run(pipe), base)
    adapter.detach()  # still safe afterwards: removes the routing hook, restores the original processors
    assert all(pipe.unet.attn_processors[name] is before[name] for name in before)
    assert torch.equal(run(pipe), base)


def test_per_block_scales_use_diffusers_dict_form(pipe, adapter):
    base = run(pipe)
    adapter.attach(pipe)
    z = adapter.z_scores(P99)
    base_scale_output = run(pipe, adapter.embeds(z))
    last = len(pipe.unet.up_blocks[0].attentions) - 1
    adapter.set_scale({"up": {"block_0": [0.0] * last + [0.8]}})  # only the last attention of up block 0
    for name, processor in pipe.unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            expected = 0.8 if name.startswith(f"up_blocks.0.attentions.{last}") else 0.0
            assert processor.scale == [expected], name
    only_up = run(pipe, adapter.embeds(z))
    adapter.set_scale({"up": {"block_0": 0.0}})
    assert torch.equal(run(pipe, adapter.embeds(z)), base)  # all-zero dict = base model
    assert (only_up - base_scale_output).abs().max() > 1e-4


def test_negative_quality_guidance_branch_contents(pipe, adapter):
    """The UNet sees [unconditional half, conditional half] features; check both halves."""
    adapter.attach(pipe)
    seen = []
    hook = pipe.unet.encoder_hid_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0][0].clone()))
    z = adapter.z_scores({"sharp": "p99", "aes": "p25"})
    try:
        run(pipe, adapter.embeds(z, negative_quality=1.0), steps=1)
        run(pipe, adapter.embeds(z, negative_quality=0.5), steps=1)
        run(pipe, adapter.embeds(z), steps=1)
    finally:
        hook.remove()
    positive = adapter.condition_inputs(z)
    for features, k in zip(seen, (1.0, 0.5)):
        assert features.shape == (2, 1, adapter.config.feature_dim)  # same batch as plain CFG: no extra UNet cost
        assert torch.allclose(features[1, 0], positive)
        assert torch.allclose(features[0, 0], adapter.condition_inputs(-k * z))
        assert features[0, 0, -1] == 1.0  # the flag still says "a condition is present"
    assert torch.equal(seen[2][0, 0], torch.zeros(adapter.config.feature_dim))  # dropped condition
    assert seen[0].shape == seen[2].shape


def test_sweep_in_one_batch_matches_one_by_one(pipe, adapter):
    """Every image of a batched sweep gets its own quality vector (diffusers issue 9813)."""
    adapter.attach(pipe, scale=0.7)
    qualities = [{"sharp": p, "aes": "p50"} for p in ("p1", "p50", "p99")]
    kwargs = dict(seed=3, steps=2, num_images=2, progress=False, output_type="np")
    batched = generate(pipe, adapter, ["a red circle", "a blue square"], qualities, batch_size=12, **kwargs)
    assert len(batched) == 12
    for result in batched:
        single = generate(
            pipe,
            adapter,
            result.settings["prompt"],
            [dict(result.settings["quality"])],
            **{**kwargs, "seed": result.settings["seed"], "num_images": 1},
        )[0]
        assert result.settings == single.settings
        assert np.abs(result.image - single.image).max() < 1e-4
    images = [torch.as_tensor(r.image) for r in batched]
    # paired images differ only through the quality target
    assert (images[0] - images[4]).abs().max() > 1e-3


def test_one_seed_per_prompt_batches_arbitrary_pairs(sd_pipe):
    """``seeds``: one image per (prompt, seed) pair and quality, in one batch, each as generated alone."""
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    qualities = [P99, {"sharp": "p1", "aes": "p1"}]
    kwargs = dict(steps=2, progress=False, output_type="np")
    pairs = [("a red circle", 5), ("a blue square", 2), ("a red circle", 9)]
    batched = generate(
        sd_pipe, adapter, [p for p, _ in pairs], qualities, seeds=[s for _, s in pairs], batch_size=6, **kwargs
    )
    assert [(r.settings["prompt"], r.settings["seed"]) for r in batched] == [pair for pair in pairs for _ in qualities]
    for result in batched:
        alone = generate(
            sd_pipe,
            adapter,
            result.settings["prompt"],
            [dict(result.settings["quality"])],
            seed=result.settings["seed"],
            **kwargs,
        )[0]
        assert np.abs(result.image - alone.image).max() < 1e-4
    with pytest.raises(ValueError, match="one seed per prompt: got 1 seeds for 2 prompts"):
        generate(sd_pipe, adapter, ["a", "b"], P99, seeds=[1], **kwargs)
    with pytest.raises(ValueError, match="seeds"):
        generate(sd_pipe, adapter, ["a"], P99, seeds=[-1], **kwargs)


def test_direct_pipeline_call_with_several_vectors_fails_loudly(sd_pipe):
    """Plain diffusers would repeat B vectors B times and let every image attend to all of them."""
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0).attach(sd_pipe)
    try:
        z = torch.stack([adapter.z_scores(P99), adapter.z_scores({"sharp": "p1", "aes": "p1"})])
        with pytest.raises(ValueError, match="mixes per-image quality vectors"):
            run(sd_pipe, adapter.embeds(z), prompt=["a", "b"])
        assert torch.isfinite(run(sd_pipe, adapter.embeds(z[0]), prompt=["a", "b"])).all()  # one vector: fine
    finally:
        adapter.detach()


def test_generate_is_reproducible_and_records_settings(sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    first = generate(sd_pipe, adapter, "a red circle", P99, seed=7, steps=2, progress=False, negative_quality=1.0)
    second = generate(sd_pipe, adapter, "a red circle", P99, seed=7, steps=2, progress=False, negative_quality=1.0)
    assert not adapter.is_attached  # attached for the call only
    assert list(first[0].image.getdata()) == list(second[0].image.getdata())
    settings = first[0].settings
    assert settings["seed"] == 7 and settings["negative_quality"] == 1.0 and settings["scale"] == 0.5
    assert settings["quality_z"]["sharp"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    "setting, message",
    [
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(steps=-1), "steps must be an integer >= 1"),
        (dict(guidance=float("nan")), "guidance must be a finite number"),
        (dict(scale=float("nan")), "scale must be a finite number"),
        (dict(scale={"up": "abc"}), "scale['up'] must be a finite number"),
        (dict(num_images=0), "num_images must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(height=0), "height must be an integer >= 2"),  # the tiny VAE's scale factor is 2
        (dict(width=35), "width must be a multiple of 2 (the VAE's scale factor), got 35"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(negative_quality=-1.0), "negative_quality must be a number >= 0"),
    ],
)
def test_generate_validates_its_settings_before_any_work(sd_pipe, setting, message):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(sd_pipe, adapter, "a red circle", P99, progress=False, **setting)
    assert not adapter.is_attached


def test_targets_that_overflow_the_projection_are_refused(sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    with (
        pytest.warns(UserWarning, match="outside the scores the adapter was trained on"),
        pytest.raises(ValueError, match="features overflow in float32"),
    ):
        generate(sd_pipe, adapter, "a red circle", {"sharp": 1e30, "aes": "p50"}, steps=1, progress=False)


def test_generate_refuses_an_adapter_attached_elsewhere(sd_pipe):
    other = tiny_sd_pipeline(seed=1)
    adapter = IQAAdapter.for_unet(other, two_metrics(), seed=0).attach(other)
    try:
        with pytest.raises(RuntimeError, match="attached to another UNet"):
            generate(sd_pipe, adapter, "a", P99, steps=1, progress=False)
    finally:
        adapter.detach()


def test_save_load_round_trip_is_bit_exact(tmp_path, pipe, adapter):
    adapter.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.safetensors", "config.json"]
    loaded = IQAAdapter.from_pretrained(tmp_path / "adapter")
    assert loaded.config == adapter.config
    for (name, a), (_, b) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    z = adapter.z_scores(P99)
    adapter.attach(pipe)
    original = run(pipe, adapter.embeds(z))
    adapter.detach()
    loaded.attach(pipe)
    try:
        assert torch.equal(run(pipe, loaded.embeds(z)), original)
    finally:
        loaded.detach()


def test_adapter_weights_only_no_unet(tmp_path, sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    adapter.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter.safetensors"))
    assert keys == set(adapter.state_dict())
    assert all(k.startswith(("projection.", "kv.")) for k in keys)


def test_mismatched_base_names_both_widths(sd_pipe, sdxl_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    with pytest.raises(AdapterMismatchError, match=r"width 32.*this UNet has width 64"):
        adapter.attach(sdxl_pipe)
    assert not adapter.is_attached and sdxl_pipe.unet.encoder_hid_proj is None


def test_feature_count_errors(sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    with pytest.raises(ValueError, match=r"expected 2 z-scores \(sharp, aes\)"):
        adapter.condition_inputs(torch.zeros(3))


def test_other_schedulers_and_cutoff_callback_work(sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    original = sd_pipe.scheduler
    sd_pipe.scheduler = EulerDiscreteScheduler.from_config(original.config)
    try:
        adapter.attach(sd_pipe)
        embeds = adapter.embeds(adapter.z_scores(P99))
        out = run(sd_pipe, embeds, steps=3)
        assert torch.isfinite(out).all()
        # diffusers' callback switches the adapter off after a fraction of the steps
        run(sd_pipe, embeds, steps=4, callback_on_step_end=IPAdapterScaleCutoffCallback(cutoff_step_ratio=0.5))
        scales = [p.scale for p in sd_pipe.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
        assert all(s == [0.0] for s in scales)
    finally:
        adapter.detach()
        sd_pipe.scheduler = original


def test_controlnet_pipeline_keeps_working(sd_pipe):
    torch.manual_seed(0)
    # one stride-2 stage in the conditioning embedding: 32 px control image -> 16 px latents
    controlnet = ControlNetModel.from_unet(sd_pipe.unet, conditioning_embedding_out_channels=(16, 32))
    control_pipe = StableDiffusionControlNetPipeline(
        vae=sd_pipe.vae,
        text_encoder=sd_pipe.text_encoder,
        tokenizer=sd_pipe.tokenizer,
        unet=sd_pipe.unet,
        controlnet=controlnet,
        scheduler=sd_pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    control_pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 32, 32)
    base = run(control_pipe, image=image, height=32, width=32)
    adapter = IQAAdapter.for_unet(control_pipe, two_metrics(), seed=0)
    adapter.attach(control_pipe, scale=0.0)
    try:
        z = adapter.z_scores(P99)
        assert torch.equal(run(control_pipe, adapter.embeds(z), image=image, height=32, width=32), base)
        adapter.set_scale(0.5)
        assert (run(control_pipe, adapter.embeds(z), image=image, height=32, width=32) - base).abs().max() > 1e-4
    finally:
        adapter.detach()


def test_lora_on_the_base_keeps_working():
    """A LoRA on the text K/V: quality K/V start from the LoRA's frozen base weights; lambda=0 = LoRA model."""
    from peft import LoraConfig

    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with_lora = run(pipe)
    pipe.unet.disable_adapters()
    without_lora = run(pipe)
    pipe.unet.enable_adapters()
    assert (with_lora - without_lora).abs().max() > 1e-4  # the LoRA is active

    adapter = IQAAdapter.for_unet(pipe, two_metrics(), seed=0)
    layer = pipe.unet.get_submodule(adapter.config.layers[0].name)
    assert torch.equal(adapter.kv[0].to_k.weight, layer.to_k.base_layer.weight)
    adapter.attach(pipe, scale=0.0)
    z = adapter.z_scores(P99)
    assert torch.equal(run(pipe, adapter.embeds(z)), with_lora)
    adapter.set_scale(0.5)
    assert (run(pipe, adapter.embeds(z)) - with_lora).abs().max() > 1e-4
    adapter.detach()
    assert torch.equal(run(pipe), with_lora)
