"""The LoDa network: official parameter count, frozen parts, variants, checkpoints that rebuild bit-exactly."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors

import hub_fixtures
from iqa_adapter.loda import build_model, loda_preset
from iqa_adapter.loda.config import LoDaConfig
from iqa_adapter.loda.losses import norm_in_norm_loss
from iqa_adapter.loda.model import CheckpointError, CosineHead, LoDa, pretrained_backbone_fields, seeded_init
from iqa_adapter.loda.timm_backbones import TimmCheckpointError, load_timm_state, timm_backbone_fields

# SHA-256 of the tiny preset's seeded backbones: if this changes, tiny checkpoints saved elsewhere no longer
# rebuild bit-exactly (torch's CPU normal generator or seeded_init changed)
TINY_FINGERPRINT = "1a9ede6ab72afafa879746ca4bf24cca86b6ac0e2d026efdc2203b33a4840b04"


def official_trainable_parameters(width=768, r=64, stages=(256, 512, 1024, 2048), blocks=12) -> int:
    """The official model's trainable parameters, from the layer sizes in REFERENCE.md."""
    extractor = sum(c * r + r + 9 * r * r for c in stages)  # Conv1x1(c->r) with bias, Conv3x3(r->r) without
    down = (width * r + r) + (r * r + r)  # MLP width -> r -> r
    attention = r * r + r * 2 * r + (r * r + r)  # q (no bias), kv (no bias), proj
    up = (r * width + width) + (width * width + width)  # MLP r -> width -> width
    scale = width
    head = width  # cosine head: one weight vector, no bias
    return extractor + blocks * (down + attention + up + scale) + head


def test_base_preset_has_the_official_trainable_parameter_count():
    model = build_model(loda_preset("base"), device="meta")
    counts = model.parameter_counts()
    assert counts["trainable"] == official_trainable_parameters() == 8_927_488
    assert round(counts["trainable"] / 1e6, 2) == 8.93
    vit_b16, resnet50_without_fc = 85_798_656, 23_508_032
    assert counts["total"] == counts["trainable"] + vit_b16 + resnet50_without_fc
    # the ablation baselines through the same code
    probe = build_model(loda_preset("base", variant="linear_probe"), device="meta").parameter_counts()
    assert probe == {"trainable": 768, "total": vit_b16 + 768}
    full = build_model(loda_preset("base", variant="full_finetune"), device="meta").parameter_counts()
    assert full["trainable"] == full["total"] == vit_b16 + 768
    added = build_model(loda_preset("base", variant="add_tokens"), device="meta").parameter_counts()
    assert added["trainable"] == 8_927_488 - 12 * (64 * 64 + 64 * 128 + 64 * 64 + 64)


def test_scales_start_near_zero_so_the_vit_is_unchanged_at_first():
    model = build_model(loda_preset("tiny"), seed=0)
    scales = torch.stack([injector.scale for injector in model.injectors])
    assert scales.abs().max() < 0.1 and scales.abs().mean() > 1e-3  # N(0, 0.02^2), truncated only at +-2
    assert 0.015 < scales.std() < 0.025
    probe = build_model(loda_preset("tiny", variant="linear_probe"), seed=0)  # the same ViT, no injection
    with torch.no_grad():
        images = torch.rand(2, 3, 32, 32)
        injected = model.forward_features(images)["cls"]
        untouched = probe.forward_features(images)["cls"]
    relative = (injected - untouched).norm() / untouched.norm()
    assert 0 < relative < 0.2


def test_frozen_parts_get_no_gradient_and_do_not_change():
    model = build_model(loda_preset("tiny"), seed=0)
    frozen = {name: t.clone() for name, t in model.state_dict().items() if name.startswith(("vit.", "cnn."))}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    assert not model.vit.training and not model.cnn.training and model.injectors.training
    for _ in range(3):
        loss = norm_in_norm_loss(model(torch.rand(8, 3, 32, 32)), torch.rand(8))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if name.startswith(("vit.", "cnn.")):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    for name, tensor in model.state_dict().items():
        if name in frozen:
            assert torch.equal(tensor, frozen[name]), f"{name} changed"
    assert not any(name.startswith(("vit.", "cnn.")) for name in model.trainable_state_dict())


def test_official_batchnorm_mode_drifts_and_is_saved():
    model = build_model(loda_preset("tiny", bn_mode="official"), seed=0)
    model.train()
    assert model.cnn.training and not model.vit.training
    before = model.cnn.embedder.embedder.normalization.running_mean.clone()
    model(torch.rand(4, 3, 32, 32))
    assert not torch.equal(before, model.cnn.embedder.embedder.normalization.running_mean)
    saved = model.trainable_state_dict()
    assert "cnn.embedder.embedder.normalization.running_mean" in saved
    assert not any(name.startswith("cnn.") and name.endswith("weight") for name in saved)
    model.train(False)
    assert not model.cnn.training


def test_variants():
    images = torch.rand(2, 3, 32, 32)
    probe = build_model(loda_preset("tiny", variant="linear_probe"))
    assert probe.cnn is None and probe.injectors is None and set(probe.forward_features(images)) == {"cls"}
    full = build_model(loda_preset("tiny", variant="full_finetune"))
    assert all(p.requires_grad for p in full.vit.parameters())
    full.train()
    assert full.vit.training
    added = build_model(loda_preset("tiny", variant="add_tokens"))
    assert all(injector.cross_attn is None for injector in added.injectors)
    assert added(images).shape == (2,)
    with pytest.raises(ValueError, match="as many distortion tokens"):
        build_model(loda_preset("tiny", variant="add_tokens", grid_size=3))
    with pytest.raises(ValueError, match="choose one of loda, linear_probe"):
        loda_preset("tiny", variant="lora")


def test_scores_and_input_checks():
    model = build_model(loda_preset("tiny"))
    scores = model(torch.rand(3, 3, 32, 32))
    assert scores.shape == (3,) and (scores.abs() <= 1).all()
    with pytest.raises(ValueError, match=r"crops of shape \(N, 3, 32, 32\).*LoDaMetric"):
        model(torch.rand(1, 3, 40, 40))


def test_tiny_backbones_rebuild_bit_exactly(tmp_path):
    torch.manual_seed(123)  # the global RNG must not matter
    model = build_model(loda_preset("tiny"), seed=5)
    with torch.no_grad():
        for injector in model.injectors:  # make the trained parts non-trivial
            injector.scale.add_(0.3)
    model.save_pretrained(tmp_path)
    torch.manual_seed(999)
    again = LoDa.from_pretrained(tmp_path)
    images = torch.rand(4, 3, 32, 32)
    assert torch.equal(model(images), again(images))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["frozen_fingerprint"] == again.frozen_fingerprint() == TINY_FINGERPRINT
    assert LoDaConfig.from_dict(saved["config"]) == model.config
    # only the trained parts are in the weights file
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "loda.safetensors")) == set(model.trainable_state_dict())
    # the seeded backbones do not depend on transformers' own initialisation
    vit = build_model(loda_preset("tiny")).vit
    seeded_init(vit, 0)
    assert torch.equal(vit.embeddings.cls_token, build_model(loda_preset("tiny")).vit.embeddings.cls_token)


def test_a_backbone_that_rebuilds_differently_is_reported(tmp_path):
    build_model(loda_preset("tiny")).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["backbone_seed"] = 7
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="fingerprint mismatch"):
        LoDa.from_pretrained(tmp_path)
    assert LoDa.from_pretrained(tmp_path, verify=False) is not None
    with pytest.raises(CheckpointError, match="nowhere is not a LoDa checkpoint: the folder does not exist"):
        LoDa.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        LoDa.from_pretrained(tmp_path / "empty")


def test_pretrained_backbones_load_from_directories(tmp_path):
    seeded = build_model(loda_preset("tiny"))
    seeded.vit.save_pretrained(tmp_path / "vit")
    seeded.cnn.save_pretrained(tmp_path / "cnn")
    config = loda_preset("tiny", vit_source=str(tmp_path / "vit"), cnn_source=str(tmp_path / "cnn"))
    model = build_model(config)
    for name, tensor in seeded.state_dict().items():
        if name.startswith(("vit.", "cnn.")):
            assert torch.equal(model.state_dict()[name], tensor), name
    model.save_pretrained(tmp_path / "checkpoint")
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(LoDa.from_pretrained(tmp_path / "checkpoint")(images), model(images))
    with pytest.raises(CheckpointError, match="hidden_size: 32 there, 64 in the config"):
        build_model(config.replace(vit={**config.vit, "hidden_size": 64}))
    with pytest.raises(CheckpointError, match="--preset tiny or --backbone-init random"):
        build_model(config.replace(vit_source=str(tmp_path / "absent")))


# ---------------------------------------------------------------- timm checkpoints (the official backbones)
# Tiny random state dicts with exactly timm's key names and shapes, and an independent forward pass written
# from timm's published architecture, to check the key map into transformers' models.

TIMM_VIT = {"width": 32, "depth": 2, "heads": 2, "patch": 8, "image": 32, "mlp": 64}
TIMM_RESNET = {"stem": 8, "widths": [16, 32], "depths": [1, 2]}  # bottleneck: inner widths 4 and 8


def _random(generator: torch.Generator):
    def tensor(*shape: int, mean: float = 0.0, std: float = 0.2) -> torch.Tensor:
        return mean + std * torch.randn(shape, generator=generator)

    return tensor


def timm_vit_state(seed: int = 0, classes: int = 5) -> dict[str, torch.Tensor]:
    """A timm VisionTransformer state dict (class token, global_pool="token": final ``norm``, no ``fc_norm``)."""
    rand, v = _random(torch.Generator().manual_seed(seed)), TIMM_VIT
    width, mlp = v["width"], v["mlp"]
    state = {
        "cls_token": rand(1, 1, width),
        "pos_embed": rand(1, (v["image"] // v["patch"]) ** 2 + 1, width),
        "patch_embed.proj.weight": rand(width, 3, v["patch"], v["patch"]),
        "patch_embed.proj.bias": rand(width),
    }
    for i in range(v["depth"]):
        for norm in ("norm1", "norm2"):
            state.update({f"blocks.{i}.{norm}.weight": rand(width, mean=1.0), f"blocks.{i}.{norm}.bias": rand(width)})
        for name, (rows, cols) in {
            "attn.qkv": (3 * width, width),
            "attn.proj": (width, width),
            "mlp.fc1": (mlp, width),
            "mlp.fc2": (width, mlp),
        }.items():
            state.update({f"blocks.{i}.{name}.weight": rand(rows, cols), f"blocks.{i}.{name}.bias": rand(rows)})
    state.update(
        {
            "norm.weight": rand(width, mean=1.0),
            "norm.bias": rand(width),
            "head.weight": rand(classes, width),
            "head.bias": rand(classes),
        }
    )
    return state


def timm_resnet_state(seed: int = 1, classes: int = 5) -> dict[str, torch.Tensor]:
    """A timm ResNet state dict with bottleneck blocks (conv1 1x1, conv2 3x3 with the stride, conv3 1x1)."""
    rand, r = _random(torch.Generator().manual_seed(seed)), TIMM_RESNET
    state: dict[str, torch.Tensor] = {}

    def conv_bn(conv: str, bn: str, out: int, into: int, size: int) -> None:
        state[f"{conv}.weight"] = rand(out, into, size, size, std=(2 / (into * size * size)) ** 0.5)
        state.update(
            {
                f"{bn}.weight": rand(out, mean=1.0, std=0.1),
                f"{bn}.bias": rand(out, std=0.1),
                f"{bn}.running_mean": rand(out, std=0.1),
                f"{bn}.running_var": rand(out, std=0.1).abs() + 0.5,
                f"{bn}.num_batches_tracked": torch.tensor(7),
            }
        )

    conv_bn("conv1", "bn1", r["stem"], 3, 7)
    channels = r["stem"]
    for stage, (width, depth) in enumerate(zip(r["widths"], r["depths"]), start=1):
        for block in range(depth):
            prefix = f"layer{stage}.{block}"
            for j, (out, into, size) in enumerate(
                ((width // 4, channels, 1), (width // 4, width // 4, 3), (width, width // 4, 1)), start=1
            ):
                conv_bn(f"{prefix}.conv{j}", f"{prefix}.bn{j}", out, into, size)
            if block == 0:
                conv_bn(f"{prefix}.downsample.0", f"{prefix}.downsample.1", width, channels, 1)
            channels = width
    state.update({"fc.weight": rand(classes, channels), "fc.bias": rand(classes)})
    return state


def reference_timm_vit(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """timm's ViT forward, written from its architecture: the final normed tokens (N, 1 + patches, D)."""
    width, heads, eps = TIMM_VIT["width"], TIMM_VIT["heads"], 1e-6

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (width,), state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])

    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=TIMM_VIT["patch"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["cls_token"].expand(len(x), -1, -1), x], dim=1) + state["pos_embed"]
    n, tokens, _ = x.shape
    for i in range(TIMM_VIT["depth"]):
        qkv = linear(norm(x, f"blocks.{i}.norm1"), f"blocks.{i}.attn.qkv")
        q, k, v = qkv.reshape(n, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)
        x = x + linear((attention @ v).transpose(1, 2).reshape(n, tokens, width), f"blocks.{i}.attn.proj")
        x = x + linear(F.gelu(linear(norm(x, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1")), f"blocks.{i}.mlp.fc2")
    return norm(x, "norm")


def reference_timm_resnet(state: dict[str, torch.Tensor], images: torch.Tensor) -> list[torch.Tensor]:
    """timm's ResNet forward (v1.5 bottlenecks), written from its architecture: each stage's output."""

    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            state[f"{name}.running_mean"],
            state[f"{name}.running_var"],
            state[f"{name}.weight"],
            state[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.relu(bn(F.conv2d(images, state["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    outputs = []
    for stage, depth in enumerate(TIMM_RESNET["depths"], start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            shortcut = (
                bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
                if f"{p}.downsample.0.weight" in state
                else x
            )
            h = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
            h = F.relu(bn(F.conv2d(h, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
            x = F.relu(bn(F.conv2d(h, state[f"{p}.conv3.weight"]), f"{p}.bn3") + shortcut)
        outputs.append(x)
    return outputs


def timm_loda_config(vit_source: str | None = None, cnn_source: str | None = None) -> LoDaConfig:
    """A LoDa config whose backbones have the tiny timm architectures above."""
    v, r = TIMM_VIT, TIMM_RESNET
    vit = {
        "hidden_size": v["width"],
        "num_hidden_layers": v["depth"],
        "num_attention_heads": v["heads"],
        "intermediate_size": v["mlp"],
        "image_size": v["image"],
        "patch_size": v["patch"],
        "layer_norm_eps": 1e-6,
        "qkv_bias": True,
        "hidden_act": "gelu",
    }
    cnn = {
        "embedding_size": r["stem"],
        "hidden_sizes": r["widths"],
        "depths": r["depths"],
        "layer_type": "bottleneck",
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
    }
    return LoDaConfig(
        vit=vit, cnn=cnn, vit_source=vit_source, cnn_source=cnn_source, latent_dim=16, grid_size=2, cross_attn_heads=2
    )


def test_timm_checkpoints_map_into_transformers_backbones_exactly():
    model = build_model(timm_loda_config())  # random backbones of the timm architectures
    vit_state, resnet_state = timm_vit_state(), timm_resnet_state()
    load_timm_state(model.vit, "vit", vit_state, "timm/tiny")
    load_timm_state(model.cnn, "cnn", resnet_state, "timm/tiny")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            model.vit(images).last_hidden_state, reference_timm_vit(vit_state, images), atol=1e-5, rtol=1e-5
        )
        stages = model.cnn(images, output_hidden_states=True).hidden_states[1:]  # after the stem: the stages
        for got, want in zip(stages, reference_timm_resnet(resnet_state, images), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the fields a timm checkpoint implies are the transformers config's
    assert timm_backbone_fields("vit", vit_state, "timm/tiny", num_heads=2) == model.config.vit
    assert timm_backbone_fields("cnn", resnet_state, "timm/tiny") == model.config.cnn
    with pytest.raises(TimmCheckpointError, match="cannot tell the heads of timm ViT 'timm/tiny'"):
        timm_backbone_fields("vit", vit_state, "timm/tiny")  # width 32: not in timm's 64-wide heads


def test_base_preset_uses_the_official_timm_backbones():
    config = loda_preset("base")
    assert (config.vit_source, config.cnn_source) == (
        "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
        "timm/resnet50.a1_in1k",
    )
    assert config.vit["layer_norm_eps"] == 1e-6 and config.mean == (0.485, 0.456, 0.406)
    model = build_model(config, device="meta")
    assert model.vit.config.layer_norm_eps == 1e-6
    assert all(m.eps == 1e-5 for m in model.cnn.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_cosine_head_starts_with_unit_columns_as_the_official():
    head = build_model(loda_preset("tiny"), seed=3).head.weight
    torch.testing.assert_close(head.norm(dim=0), torch.ones(1))
    assert torch.equal(head, build_model(loda_preset("tiny"), seed=3).head.weight)
    assert not torch.equal(head, build_model(loda_preset("tiny"), seed=4).head.weight)
    torch.manual_seed(0)
    ours = CosineHead(768).weight
    torch.manual_seed(0)
    official = torch.empty(768, 1).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)  # NormedLinear's init
    torch.testing.assert_close(ours.detach(), official)


def test_timm_checkpoints_that_do_not_fit_fail_in_one_line():
    model = build_model(timm_loda_config())
    state = timm_vit_state()
    pooled = {key.replace("norm.", "fc_norm.") if key.startswith("norm.") else key: t for key, t in state.items()}
    deeper = {**state, **{key.replace("blocks.1.", "blocks.2."): t for key, t in state.items() if "blocks.1." in key}}
    narrow = {**state, "blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"][:90]}
    cases = [
        (
            pooled,
            (
                r"'timm/tiny' does not fit the LoDa config's ViTModel \(missing norm.bias, norm.weight; "
                r"unexpected fc_norm.bias, fc_norm.weight\); use a config with that backbone's architecture"
            ),
        ),
        (deeper, r"\(unexpected blocks.2.attn.proj.bias, .* and 8 more\)"),
        (narrow, r"blocks.0.attn.qkv.weight has shape \(90, 32\), the LoDa config's ViTModel needs \(96, 32\)"),
    ]
    for bad, message in cases:
        with pytest.raises(TimmCheckpointError, match=message) as error:
            load_timm_state(model.vit, "vit", bad, "timm/tiny")
        assert "\n" not in str(error.value)
    deep_stem = {
        key.replace("conv1.", "conv1.0.") if key.startswith("conv1.") else key: t
        for key, t in timm_resnet_state().items()
    }
    with pytest.raises(TimmCheckpointError, match="not a timm ResNet with a 7x7 stem: it has no tensor 'conv1.weight'"):
        timm_backbone_fields("cnn", deep_stem, "timm/tiny")


def put_in_hub_cache(cache: Path, repo: str, state: dict[str, torch.Tensor], revision: str) -> None:
    """Store ``state`` as the ``model.safetensors`` of hub repository ``repo`` at ``revision``."""
    hub_fixtures.put_in_hub_cache(cache, repo, {"model.safetensors": save_safetensors(state)}, revision)


def test_timm_backbones_load_from_the_hub_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    vit_state = timm_vit_state()
    resnet_state = {key: t for key, t in timm_resnet_state().items() if not key.endswith("num_batches_tracked")}
    put_in_hub_cache(tmp_path / "hub", "timm/tiny_vit.test", vit_state, "a" * 40)
    put_in_hub_cache(tmp_path / "hub", "timm/tiny_resnet.test", resnet_state, "b" * 40)
    config = timm_loda_config("timm/tiny_vit.test", "timm/tiny_resnet.test")
    model = build_model(config)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            model.vit(images).last_hidden_state, reference_timm_vit(vit_state, images), atol=1e-5, rtol=1e-5
        )
        assert torch.equal(
            model.cnn.encoder.stages[1].layers[0].shortcut.normalization.num_batches_tracked, torch.tensor(0)
        )
    model.save_pretrained(tmp_path / "checkpoint")
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())["config"]
    assert (saved["vit_source"], saved["cnn_source"]) == ("timm/tiny_vit.test", "timm/tiny_resnet.test")
    assert torch.equal(LoDa.from_pretrained(tmp_path / "checkpoint")(images), model(images))  # fingerprint checked
    # what --vit / --cnn timm/... read from the checkpoint (a ViT's heads: timm's 64-wide ones)
    assert pretrained_backbone_fields("cnn", "timm/tiny_resnet.test") == config.cnn
    # another revision of the same repository no longer matches the checkpoint's fingerprint
    put_in_hub_cache(tmp_path / "hub", "timm/tiny_vit.test", timm_vit_state(seed=5), "c" * 40)
    with pytest.raises(CheckpointError, match="fingerprint mismatch"):
        LoDa.from_pretrained(tmp_path / "checkpoint")
    with pytest.raises(
        CheckpointError,
        match=r"'timm/tiny_vit.test' does not match the LoDa config "
        r"\(intermediate_size: 64 there, 48 in the config\)",
    ):
        build_model(config.replace(vit={**config.vit, "intermediate_size": 48}))
    with pytest.raises(
        TimmCheckpointError,
        match="cannot load the timm backbone 'timm/absent.x'.*HF_HUB_OFFLINE is set.*not in the local cache",
    ) as error:
        build_model(config.replace(vit_source="timm/absent.x"))
    assert "\n" not in str(error.value)
