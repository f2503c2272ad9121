"""Official-format checkpoints: imported adapters must reproduce the official code's UNet outputs.

The reference below re-implements the official loading and attention semantics independently (tokens
concatenated after the text, split by count inside the processor, ``ModuleList(attn_processors.values())``
loading of ``ip_adapter`` keys), so that conversion is checked against behaviour, not against itself.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from conftest import two_metrics
from hub_fixtures import put_in_hub_cache
from iqa_adapter import AdapterMismatchError, IQAAdapter
from iqa_adapter.architectures import unet_from_config
from iqa_adapter.convert import OFFICIAL_ADAPTERS, convert_official, metrics_from_file_name, read_official_checkpoint
from iqa_adapter.hub import HubDownloadError
from iqa_adapter.projection import quality_features
from iqa_adapter.stats import cc3m_stats


class OfficialStyleProcessor(nn.Module):
    """Decoupled cross-attention as the official code computes it (text tokens first, quality tokens last)."""

    def __init__(self, hidden_size, cross_attention_dim, num_tokens, scale):
        super().__init__()
        self.num_tokens, self.scale = num_tokens, scale
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        text, quality = encoder_hidden_states[:, : -self.num_tokens], encoder_hidden_states[:, -self.num_tokens :]
        batch = hidden_states.shape[0]
        heads = attn.heads

        def split(x):
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query = split(attn.to_q(hidden_states))
        out = F.scaled_dot_product_attention(query, split(attn.to_k(text)), split(attn.to_v(text)))
        out_ip = F.scaled_dot_product_attention(query, split(self.to_k_ip(quality)), split(self.to_v_ip(quality)))
        out = (out + self.scale * out_ip).transpose(1, 2).reshape(batch, -1, heads * query.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class SelfAttentionPlaceholder(nn.Module):
    """Stands in for the parameter-free self-attention processors (numbering only)."""

    def __init__(self, processor):
        super().__init__()
        self.processor = processor

    def __call__(self, *args, **kwargs):
        return self.processor(*args, **kwargs)


def official_checkpoint(unet, feature_dim, num_tokens=2, mlp=False, seed=0):
    """Random weights in the official layout: image_proj state and ip_adapter keys numbered over all processors."""
    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim

    def rand(*shape):
        return 0.2 * torch.randn(*shape, generator=generator)

    if mlp:
        image_proj = {
            "proj.0.weight": rand(16, feature_dim),
            "proj.0.bias": rand(16),
            "proj.2.weight": rand(num_tokens * width, 16),
            "proj.2.bias": rand(num_tokens * width),
        }
    else:
        image_proj = {"proj.weight": rand(num_tokens * width, feature_dim), "proj.bias": rand(num_tokens * width)}
    image_proj.update({"norm.weight": 1 + rand(width), "norm.bias": rand(width)})
    ip_adapter = {}
    for index, name in enumerate(unet.attn_processors):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        if attention.is_cross_attention:
            ip_adapter[f"{index}.to_k_ip.weight"] = rand(attention.to_k.out_features, width)
            ip_adapter[f"{index}.to_v_ip.weight"] = rand(attention.to_v.out_features, width)
    return image_proj, ip_adapter


def official_unet_output(unet, image_proj, ip_adapter, features, num_tokens, mlp, scale, inputs):
    unet = copy.deepcopy(unet)
    processors = {}
    for name, processor in unet.attn_processors.items():
        attention = unet.get_submodule(name.removesuffix(".processor"))
        processors[name] = (
            OfficialStyleProcessor(attention.to_k.out_features, unet.config.cross_attention_dim, num_tokens, scale)
            if attention.is_cross_attention
            else SelfAttentionPlaceholder(processor)
        )
    unet.set_attn_processor(dict(processors))
    nn.ModuleList(unet.attn_processors.values()).load_state_dict(ip_adapter, strict=True)
    width = unet.config.cross_attention_dim
    if mlp:
        proj = nn.Sequential(nn.Linear(features.shape[-1], 16), nn.GELU(), nn.Linear(16, num_tokens * width))
        proj.load_state_dict({k[len("proj.") :]: v for k, v in image_proj.items() if k.startswith("proj.")})
    else:
        proj = nn.Linear(features.shape[-1], num_tokens * width)
        proj.load_state_dict({"weight": image_proj["proj.weight"], "bias": image_proj["proj.bias"]})
    tokens = F.layer_norm(
        proj(features).reshape(-1, num_tokens, width), (width,), image_proj["norm.weight"], image_proj["norm.bias"]
    )
    hidden = torch.cat([inputs["encoder_hidden_states"], tokens], dim=1)
    return unet(inputs["sample"], inputs["timestep"], hidden, added_cond_kwargs=inputs["added_cond_kwargs"]).sample


def unet_inputs(unet):
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "sample": torch.randn(2, 4, 16, 16, generator=generator),
        "timestep": torch.tensor(400),
        "encoder_hidden_states": torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator),
        "added_cond_kwargs": {},
    }
    if unet.config.addition_embed_type == "text_time":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32, generator=generator),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2),
        }
    return inputs


def write(path, image_proj, ip_adapter, layout):
    if layout == "torch":
        torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    elif layout == "safetensors":
        save_file(
            {
                **{f"image_proj.{k}": v for k, v in image_proj.items()},
                **{f"ip_adapter.{k}": v for k, v in ip_adapter.items()},
            },
            path,
        )
    else:  # the training wrapper's state: unet, qual_proj_model and adapter_modules prefixes
        state = {f"qual_proj_model.{k}": v for k, v in image_proj.items()}
        state.update({f"adapter_modules.{k}": v for k, v in ip_adapter.items()})
        state["unet.conv_in.weight"] = torch.zeros(1)
        if path.suffix == ".safetensors":  # accelerate's save_state(safe_serialization=True)
            save_file(state, path)
        else:
            torch.save(state, path)


@pytest.mark.parametrize(
    "layout, suffix, mlp, flag, frequencies",
    [
        ("torch", ".bin", False, True, 0),
        ("safetensors", ".safetensors", True, False, 0),
        ("wrapper", ".bin", False, True, 2),
        ("wrapper", ".safetensors", True, True, 1),
    ],
)
def test_imported_official_checkpoint_reproduces_official_outputs(
    tmp_path, pipe, layout, suffix, mlp, flag, frequencies
):
    unet = pipe.unet
    metrics = two_metrics()
    feature_dim = (len(metrics) + flag) * (1 + 2 * frequencies)
    image_proj, ip_adapter = official_checkpoint(unet, feature_dim, mlp=mlp)
    path = tmp_path / f"ckpt{suffix}"
    write(path, image_proj, ip_adapter, layout)

    adapter = convert_official(path, unet, metrics, trust_pickle=True, encoding_frequencies=frequencies or None)
    assert adapter.config.train_scale == 1.0  # the official code trains at scale 1.0
    assert (adapter.config.flag_feature, adapter.config.encoding_frequencies) == (flag, frequencies)
    assert adapter.config.projection == ("mlp" if mlp else "linear") and adapter.config.num_tokens == 2

    z = torch.tensor([[1.5, -0.5], [-2.0, 0.25]])
    features = quality_features(z, flag, frequencies)
    inputs = unet_inputs(unet)
    with torch.no_grad():
        expected = official_unet_output(unet, image_proj, ip_adapter, features, 2, mlp, 0.6, inputs)
        adapter.attach(unet, scale=0.6)
        try:
            embeds = adapter.embeds(z, do_classifier_free_guidance=False)
            ours = unet(
                **{**inputs, "added_cond_kwargs": {**inputs["added_cond_kwargs"], "image_embeds": embeds}}
            ).sample
        finally:
            adapter.detach()
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_pickle_needs_explicit_trust(tmp_path, sd_pipe):
    image_proj, ip_adapter = official_checkpoint(sd_pipe.unet, 3)
    write(tmp_path / "ckpt.bin", image_proj, ip_adapter, "torch")
    with pytest.raises(ValueError, match="--trust-pickle"):
        read_official_checkpoint(tmp_path / "ckpt.bin")


def test_wrong_base_or_metrics_give_clear_errors(tmp_path, sd_pipe, sdxl_pipe):
    image_proj, ip_adapter = official_checkpoint(sd_pipe.unet, 3)
    write(tmp_path / "ckpt.safetensors", image_proj, ip_adapter, "safetensors")
    with pytest.raises(AdapterMismatchError, match=r"width 32.*base UNet has 64"):
        convert_official(tmp_path / "ckpt.safetensors", sdxl_pipe.unet, two_metrics())
    with pytest.raises(ValueError, match="list the checkpoint's metrics in --metrics"):
        convert_official(tmp_path / "ckpt.safetensors", sd_pipe.unet, two_metrics() * 2)
    save_file({"something.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not an official IQA-Adapter checkpoint"):
        read_official_checkpoint(tmp_path / "other.safetensors")


def test_one_metric_for_a_two_metric_checkpoint_is_refused_not_reinterpreted(tmp_path, sd_pipe):
    """3 input features are 2 metrics + flag, or 1 metric with sinusoidal encoding L = 1: never guessed."""
    image_proj, ip_adapter = official_checkpoint(sd_pipe.unet, 3)
    write(tmp_path / "ckpt.safetensors", image_proj, ip_adapter, "safetensors")
    with pytest.raises(
        ValueError, match=r"2 metrics with the flag feature.*1 metric\(s\) with sinusoidal encoding L=1"
    ):
        convert_official(tmp_path / "ckpt.safetensors", sd_pipe.unet, two_metrics()[:1])
    confirmed = convert_official(tmp_path / "ckpt.safetensors", sd_pipe.unet, two_metrics()[:1], encoding_frequencies=1)
    assert (confirmed.config.flag_feature, confirmed.config.encoding_frequencies) == (False, 1)
    with pytest.raises(ValueError, match="L=2 do not give"):
        convert_official(tmp_path / "ckpt.safetensors", sd_pipe.unet, two_metrics(), encoding_frequencies=2)


def test_unreadable_checkpoints_are_named(tmp_path, sd_pipe):
    torch.save({"a": torch.zeros(2)}, tmp_path / "pickle.safetensors")
    with pytest.raises(ValueError, match="looks like a torch pickle file, not safetensors"):
        read_official_checkpoint(tmp_path / "pickle.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors is not a readable safetensors file"):
        read_official_checkpoint(tmp_path / "empty.safetensors")
    torch.save({"a": ValueError("not a tensor")}, tmp_path / "objects.bin")
    with pytest.raises(ValueError, match="holds more than tensors.*never unpickles"):
        read_official_checkpoint(tmp_path / "objects.bin", trust_pickle=True)


def test_full_sdxl_layout_matches_the_official_numbering():
    """140 processors, quality K/V on the 70 odd ids; about 341 M adapter parameters (REFERENCE.md)."""
    unet = unet_from_config("sdxl", device="meta")
    names = list(unet.attn_processors)
    assert len(names) == 140
    cross = [i for i, n in enumerate(names) if unet.get_submodule(n.removesuffix(".processor")).is_cross_attention]
    assert cross == list(range(1, 140, 2))
    blocks = {
        "down_blocks.1": (1, 7),
        "down_blocks.2": (9, 47),
        "up_blocks.0": (49, 107),
        "up_blocks.1": (109, 119),
        "mid_block": (121, 139),
    }
    for prefix, (first, last) in blocks.items():
        ids = [i for i in cross if names[i].startswith(prefix)]
        assert (ids[0], ids[-1]) == (first, last), prefix
    from iqa_adapter.adapter import cross_attention_layers

    kv_parameters = sum(2 * 2048 * layer.hidden_size for layer in cross_attention_layers(unet))
    assert kv_parameters == pytest.approx(341e6, rel=0.005)


@pytest.mark.parametrize(
    "name, metrics",
    [
        ("iqa_adapter_topiq_nr_laion_aes.safetensors", ["topiq_nr", "laion_aes"]),
        ("sdxl/topiq_nr-flive+clipiqa+laion_aes.safetensors", ["topiq_nr-flive", "clipiqa+", "laion_aes"]),
        ("liqe_mix/ip_adapter.safetensors", ["liqe_mix"]),
        ("dbcnniqa.safetensors", []),  # a name inside a longer word is not a metric
    ],
)
def test_metrics_are_read_from_official_file_names(name, metrics):
    assert metrics_from_file_name(name, list(cc3m_stats())) == metrics


def test_official_checkpoints_load_by_file_name_from_the_hub_cache_offline(tmp_path, sd_pipe, monkeypatch):
    from huggingface_hub import constants

    image_proj, ip_adapter = official_checkpoint(sd_pipe.unet, feature_dim=3)
    name = "sd15/iqa_adapter_topiq_nr_laion_aes.safetensors"
    write(tmp_path / "local.safetensors", image_proj, ip_adapter, "safetensors")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(
        tmp_path / "hub", "lab/iqa-adapters", {name: (tmp_path / "local.safetensors").read_bytes()}, "d" * 40
    )

    from_hub = IQAAdapter.from_official("lab/iqa-adapters", sd_pipe, weight_name=name)
    assert from_hub.metric_names == ["topiq_nr", "laion_aes"] and from_hub.config.flag_feature
    assert from_hub.config.extra["converted_from"] == f"lab/iqa-adapters/{name}"
    table = cc3m_stats()
    named = convert_official(tmp_path / "local.safetensors", sd_pipe.unet, [table["topiq_nr"], table["laion_aes"]])
    assert all(torch.equal(from_hub.state_dict()[k], named.state_dict()[k]) for k in named.state_dict())
    with pytest.raises(ValueError, match="cannot tell the metrics from the file name 'local.safetensors'"):
        IQAAdapter.from_official(tmp_path / "local.safetensors", sd_pipe)
    with pytest.raises(HubDownloadError, match="its local cache has no sd15/missing_topiq_nr.safetensors"):
        IQAAdapter.from_official("lab/iqa-adapters", sd_pipe, weight_name="sd15/missing_topiq_nr.safetensors")


@pytest.mark.parametrize("label, metrics", sorted(OFFICIAL_ADAPTERS.items()))
def test_every_official_adapter_is_read_back_from_its_file_name(label, metrics):
    """The README's import command of each adapter of the paper: its metrics have CC3M statistics, and a file named
    after them (as the README suggests) names them back in order."""
    assert all(name in cc3m_stats() for name in metrics)
    assert metrics_from_file_name(f"iqa_adapter_{'_'.join(metrics)}.bin", list(cc3m_stats())) == list(metrics)
