import json
import os
import string
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from iqa_adapter import IQAAdapter, MetricStats
from iqa_adapter.app.process import free_port
from iqa_adapter.architectures import tiny_sd_pipeline, tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train faster on one thread, and far faster than on two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_metrics() -> list[MetricStats]:
    """Two metrics with simple hand-checkable statistics."""
    return [
        MetricStats("sharp", mean=0.5, std=0.1, percentiles={1.0: 0.2, 50.0: 0.5, 99.0: 0.8}),
        MetricStats("aes", mean=5.0, std=0.5, percentiles={1.0: 3.5, 50.0: 5.0, 99.0: 6.5}),
    ]


@pytest.fixture(scope="session")
def sd_pipe():
    pipe = tiny_sd_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def sdxl_pipe():
    pipe = tiny_sdxl_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["sd", "sdxl"])
def pipe(request, sd_pipe, sdxl_pipe):
    return sd_pipe if request.param == "sd" else sdxl_pipe


@pytest.fixture
def adapter(pipe):
    """A fresh adapter with a random (seeded) projection, detached again after the test."""
    made = IQAAdapter.for_unet(pipe, two_metrics(), seed=1)
    # perturb the quality K/V away from the text K/V so that quality tokens matter strongly
    with torch.no_grad():
        for kv in made.kv:
            kv.to_k.weight.add_(0.05 * torch.randn_like(kv.to_k.weight))
            kv.to_v.weight.add_(0.05 * torch.randn_like(kv.to_v.weight))
    yield made
    if made.is_attached:
        made.detach()


def run(pipe, embeds=None, prompt="a red circle", seed=0, steps=2, guidance=7.5, **kwargs):
    """Latents of a short pipeline run with fixed noise."""
    generator = torch.Generator().manual_seed(seed)
    if embeds is not None:
        kwargs["ip_adapter_image_embeds"] = embeds
    return pipe(
        prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="latent", **kwargs
    ).images


# ---------------------------------------------------------------- tiny random models for the evaluation

TINY_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="session")
def dinov2_folder(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(**TINY_LAYERS, image_size=32, patch_size=8)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    """A tiny CLIP with a byte-level tokenizer without merges (every byte is a token)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    alphabet = sorted(ByteLevel.alphabet())
    vocab = {
        **{char: index for index, char in enumerate(alphabet)},
        **{char + "</w>": len(alphabet) + index for index, char in enumerate(alphabet)},
    }
    start, end = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": start, "<|endoftext|>": end})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = CLIPConfig(
        text_config=dict(
            **TINY_LAYERS,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=start,
            eos_token_id=end,
            pad_token_id=end,
        ),
        vision_config=dict(**TINY_LAYERS, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random OWLv2 and CLIP folders (model + processor with a character-level CLIP tokenizer)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    root = tmp_path_factory.mktemp("geneval_models")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in [*string.ascii_lowercase, "-"]:
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=64)
    layers = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {
        **layers,
        "vocab_size": len(vocab),
        "max_position_embeddings": 64,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {**layers, "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        root / "owlv2"
    )
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    ).save_pretrained(root / "owlv2")
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root / "clip")
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    ).save_pretrained(root / "clip")
    return root


# ---------------------------------------------------------------- several processes


def launch_two_cpu_processes(arguments: list[str], **options) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``arguments`` (a script and its arguments, or ``-m module ...``) on 2 CPU processes."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_port",
        str(free_port()),
        *arguments,
    ]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False, **options)
