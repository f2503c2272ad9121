"""The LoDa network: official parameter count, frozen parts, variants, checkpoints that rebuild bit-exactly."""

import json

import pytest
import torch

from iqa_adapter.loda import build_model, loda_preset
from iqa_adapter.loda.config import LoDaConfig
from iqa_adapter.loda.losses import norm_in_norm_loss
from iqa_adapter.loda.model import CheckpointError, LoDa, seeded_init

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
    assert scales.abs().max() <= 0.04 and scales.abs().mean() > 1e-3
    assert 0.008 < scales.std() < 0.03
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
