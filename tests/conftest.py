import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from iqa_adapter import IQAAdapter, MetricStats
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
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                output_type="latent", **kwargs).images
