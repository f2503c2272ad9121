"""The pyiqa backend against the real pyiqa (``make test-pyiqa`` builds the environment it needs).

Skipped where pyiqa does not import: the default environment's CPU torch has no torchvision that loads beside
it. ``make test-pyiqa`` builds ``.venv-pyiqa`` (torch 2.14.1 + torchvision 0.29.1, a pair that loads together;
the CUDA build runs on a CPU machine too) and runs this file there.

Only metrics that pyiqa computes without downloaded weights are scored (:data:`OFFLINE`); the others need a
parameter or weight file from the network at first use. For each, our registry (``pyiqa:<name>`` and, where no
built-in metric has the name, the plain name) is compared with ``pyiqa.create_metric`` called directly: scores,
orientation, score range, batch against one-by-one scoring, devices and gradient mode. Gradient flow through our
wrapper is checked with a weight-free build of a CNN metric (``cnniqa`` with ``pretrained=None``). The last test
compares the project's own PIQE with pyiqa's.
"""

import importlib.util
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from iqa_adapter.images import open_image, rgb_tensor
from iqa_adapter.metrics import NotDifferentiableError, create_metric, list_metrics, metric_info
from iqa_adapter.metrics.pyiqa_backend import MetricUnavailableError, weights_dir
from iqa_adapter.metrics.registry import builtin_metrics

try:
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
except Exception as error:  # noqa: BLE001  (ImportError, or RuntimeError from a torchvision that does not fit torch)
    pytest.skip(
        f"pyiqa does not import here ({type(error).__name__}: {error}); `make test-pyiqa` builds an "
        "environment where it does",
        allow_module_level=True,
    )

OFFLINE = ["piqe", "entropy"]
"""pyiqa no-reference metrics that need no downloaded file (checked offline with pyiqa 0.1.16)."""
NEED_FILES = ["niqe", "niqe_matlab", "brisque", "brisque_matlab", "ilniqe", "nrqm", "pi"]
"""Classical pyiqa metrics that still download a parameter file (``.mat``/``.pth``) at first use."""
BUILTIN_PIQE_TOLERANCE = 0.01  # PIQE points (0-100); pyiqa states it matches MATLAB's piqe to 0.005


# ---------------------------------------------------------------- images


def texture(seed: int, height: int, width: int, finest: int = 32, decay: float = 0.5) -> torch.Tensor:
    """A random colour texture (3, H, W) in [0, 1]: octaves of upsampled noise, 2 to ``finest`` cells a side,
    weighted by cells ** -decay (smooth with the defaults, fine-grained with a large ``finest``)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(1, 3, height, width)
    for octave in range(1, int(math.log2(finest)) + 1):
        noise = torch.randn(1, 3, 2**octave, 2**octave, generator=generator)
        image += F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False) / 2 ** (octave * decay)
    return (0.5 + 0.15 * (image - image.mean()) / image.std()).clamp(0, 1)[0]


def landscape(seed: int, height: int, width: int) -> torch.Tensor:
    """A natural-looking synthetic picture (3, H, W): sky gradient, sun, two textured hills, a little noise."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    sky = torch.stack([0.35 + 0.3 * y, 0.55 + 0.25 * y, 0.95 - 0.1 * y])
    sun = ((x - 0.7) ** 2 + (y - 0.2) ** 2 < 0.006).float()
    image = sky * (1 - sun) + torch.tensor([1.0, 0.95, 0.7])[:, None, None] * sun
    detail = texture(seed + 100, height, width, finest=64, decay=0.3)
    for base, amplitude, phase, colour in [(0.55, 0.08, 1.0, (0.25, 0.45, 0.2)), (0.72, 0.05, 2.5, (0.35, 0.3, 0.2))]:
        ridge = base + amplitude * torch.sin(6 * x + phase) + 0.02 * torch.sin(23 * x + 2 * phase)
        hill = (y > ridge).float()
        ground = torch.tensor(colour)[:, None, None] * (0.6 + 0.8 * detail)
        image = image * (1 - hill) + ground * hill
    image = image + 0.02 * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1)


def blocky(image: torch.Tensor, block: int = 8) -> torch.Tensor:
    """``image`` averaged over ``block`` x ``block`` cells (a blocking artefact)."""
    height, width = image.shape[-2:]
    small = F.avg_pool2d(image[None], block, ceil_mode=True)
    return F.interpolate(small, scale_factor=block, mode="nearest")[0, :, :height, :width]


def noisy(image: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def sixteen_bit_grey(path, height: int = 120, width: int = 200) -> torch.Tensor:
    """A 16-bit grey PNG (smooth ramp with texture, far more than 256 levels) read back through the project."""
    ramp = np.linspace(0.1, 0.9, width)[None, :] * np.ones((height, 1))
    detail = texture(7, height, width, finest=128, decay=0.3)[0].numpy().astype(np.float64)
    values = np.round(np.clip(ramp + 0.25 * (detail - 0.5), 0, 1) * 65535).astype(np.uint16)
    Image.fromarray(values).save(path)
    image = open_image(path)
    assert image.mode.startswith("I;16") or image.mode == "I", image.mode
    tensor = rgb_tensor(image)
    assert len(torch.unique(tensor[0])) > 256  # read at full precision, not through 8 bits
    return tensor[None]


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Batches of (N, 3, H, W) images by a label that names their size."""
    found = {}
    for height, width in [(300, 300), (256, 256), (97, 131)]:
        base = landscape(1, height, width)
        found[f"{height}x{width}"] = torch.stack(
            [
                texture(0, height, width),  # smooth: few or no active PIQE blocks
                texture(1, height, width, finest=128, decay=0.3),
                texture(2, height, width, finest=256, decay=0.2),
                base,
                blocky(base),
                noisy(base, 0.08, seed=2),
            ]
        )
    found["16-bit grey 120x200"] = sixteen_bit_grey(tmp_path_factory.mktemp("grey") / "grey16.png")
    return found


def direct(name: str, **options):
    return pyiqa.create_metric(name, device=torch.device("cpu"), **options)


def direct_scores(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model(images)
    return (output[0] if isinstance(output, tuple) else output).reshape(-1).float()


def parsed_range(text: str) -> tuple[float, float]:
    low, high = (float(part.strip().lstrip("~")) for part in text.split(","))
    return low, high


# ---------------------------------------------------------------- names, orientation, range


@pytest.mark.parametrize("name", OFFLINE)
def test_names_orientation_and_range_follow_pyiqa(name):
    model = direct(name)
    config = DEFAULT_CONFIGS[name]
    names = ["pyiqa:" + name] + ([name] if name not in builtin_metrics() else [])
    for registry_name in names:
        info = metric_info(registry_name)
        metric = create_metric(registry_name)
        assert info.backend == "pyiqa" and metric.name == info.name == "pyiqa:" + name
        assert metric.higher_is_better == info.higher_is_better == (not model.lower_better)
        assert metric.score_range == info.score_range == parsed_range(config["score_range"])
    listed = {info.name: info for info in list_metrics()}
    assert listed["pyiqa:" + name].higher_is_better == (not model.lower_better)


def test_plain_piqe_is_the_builtin_and_plain_entropy_is_pyiqa():
    assert metric_info("piqe").backend == "builtin" and metric_info("pyiqa:piqe").backend == "pyiqa"
    assert metric_info("entropy").backend == "pyiqa"
    assert not metric_info("piqe").higher_is_better and not metric_info("pyiqa:piqe").higher_is_better
    assert metric_info("entropy").higher_is_better


# ---------------------------------------------------------------- scores, batching


@pytest.mark.parametrize("name", OFFLINE)
def test_scores_equal_pyiqa_called_directly(name, batches):
    model = direct(name)
    low, high = parsed_range(DEFAULT_CONFIGS[name]["score_range"])
    for registry_name in ["pyiqa:" + name] + ([name] if name not in builtin_metrics() else []):
        metric = create_metric(registry_name)
        for label, images in batches.items():
            ours = metric.score(images)
            expected = direct_scores(model, images)
            assert ours.shape == (len(images),) and ours.dtype == torch.float32, label
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4, msg=f"{registry_name} on {label}")
            assert bool(((ours >= low) & (ours <= high)).all()), f"{registry_name} on {label}: {ours.tolist()}"


@pytest.mark.parametrize("name", OFFLINE)
def test_batch_scores_equal_one_by_one_scores(name, batches):
    metric = create_metric("pyiqa:" + name)
    model = direct(name)
    for label, images in batches.items():
        together = metric.score(images)
        alone = torch.cat([metric.score(image[None]) for image in images])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-4, msg=label)
        direct_alone = torch.cat([direct_scores(model, image[None]) for image in images])
        torch.testing.assert_close(alone, direct_alone, rtol=1e-5, atol=1e-4, msg=label)


@pytest.mark.parametrize("name", OFFLINE)
def test_inputs_just_outside_the_range_are_accepted(name, batches):
    """check_images allows 1e-3 outside [0, 1]; pyiqa asserts 1e-6: the backend clamps in between."""
    images = batches["97x131"].clone()
    images[:, :, 0, 0] = 1.0005
    images[:, :, 0, 1] = -0.0005
    expected = direct_scores(direct(name), images.clamp(0, 1))
    torch.testing.assert_close(create_metric("pyiqa:" + name).score(images), expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- devices


@pytest.mark.parametrize("name", OFFLINE)
def test_cpu_device(name, batches):
    metric = create_metric("pyiqa:" + name, device="cpu")
    assert metric.device == torch.device("cpu")
    assert metric.score(batches["97x131"]).device == torch.device("cpu")


@pytest.mark.parametrize("name", OFFLINE)
def test_device_off_the_cpu_is_tracked_and_moves(name, batches):
    """pyiqa's device marker is a plain tensor off the CPU; without a GPU, the meta device shows the same.

    Built there, the metric must report that device (its gradient model is built on it), and moving the
    module (``to_empty``: meta tensors hold no data to copy) must take pyiqa's computation along.
    """
    metric = create_metric("pyiqa:" + name, device="meta")
    assert metric.device == torch.device("meta")
    metric.to_empty(device="cpu")
    assert metric.device == torch.device("cpu")
    torch.testing.assert_close(
        metric.score(batches["256x256"]), direct_scores(direct(name), batches["256x256"]), rtol=1e-5, atol=1e-4
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@pytest.mark.parametrize("name", OFFLINE)
def test_cuda_device(name, batches):
    images = batches["97x131"]
    expected = direct_scores(direct(name), images)
    built_there = create_metric("pyiqa:" + name, device="cuda")
    moved = create_metric("pyiqa:" + name).to("cuda")
    for metric in (built_there, moved):
        assert metric.device.type == "cuda"
        on_cpu = metric.score(images)
        assert on_cpu.device == torch.device("cpu")  # scores come back on the images' device
        torch.testing.assert_close(on_cpu, expected, rtol=1e-4, atol=1e-2)
        assert metric.score(images.cuda()).device.type == "cuda"
    built_there.to("cpu")
    torch.testing.assert_close(built_there.score(images), expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- gradients


def pyiqa_gradient(name: str, images: torch.Tensor, **options):
    """(scores carry a graph, images.grad) from pyiqa's own loss mode; grad None where scores have no graph."""
    model = pyiqa.create_metric(name, as_loss=True, loss_reduction="none", device=torch.device("cpu"), **options)
    images = images.clone().requires_grad_(True)
    scores = model(images)
    if not scores.requires_grad:
        return scores, None
    scores.sum().backward()
    return scores, images.grad


@pytest.mark.parametrize("name", OFFLINE)
def test_differentiable_flag_matches_what_pyiqa_gives(name, batches):
    images = batches["256x256"][:2]
    _, gradient = pyiqa_gradient(name, images)
    useful = gradient is not None and bool(gradient.abs().max() > 0)
    info = metric_info("pyiqa:" + name)
    assert info.differentiable == useful
    metric = create_metric("pyiqa:" + name)
    assert metric.differentiable == useful
    if not useful:  # piqe: zero gradient (torch.round); entropy: no graph (integer histogram)
        with pytest.raises(NotDifferentiableError, match="not differentiable"):
            metric.score_with_grad(images.clone().requires_grad_(True))
        assert not any(info.name == "pyiqa:" + name and info.differentiable for info in list_metrics())


def test_gradients_flow_through_the_backend_as_through_pyiqa(batches):
    """A CNN metric built without its weights (``pretrained=None``, random init) needs no download."""
    images = batches["300x300"][:3]
    torch.manual_seed(0)
    reference = pyiqa.create_metric(
        "cnniqa", as_loss=True, loss_reduction="none", device=torch.device("cpu"), pretrained=None
    )
    metric = create_metric("pyiqa:cnniqa", pretrained=None)
    assert metric.differentiable and metric_info("pyiqa:cnniqa").differentiable
    metric.score_with_grad(images[:1])  # builds the loss-mode model
    for model in (metric.model, metric.loss_model):
        model.net.load_state_dict(reference.net.state_dict())
    ours_input = images.clone().requires_grad_(True)
    ours = metric.score_with_grad(ours_input)
    assert ours.shape == (3,) and ours.requires_grad
    ours.sum().backward()
    theirs_input = images.clone().requires_grad_(True)
    theirs = reference(theirs_input).reshape(-1)
    theirs.sum().backward()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_input.grad, theirs_input.grad, rtol=1e-4, atol=1e-8)
    assert ours_input.grad.abs().max() > 0
    torch.testing.assert_close(metric.score(images), ours.detach(), rtol=1e-5, atol=1e-6)
    alone = torch.cat([metric.score_with_grad(image[None]).detach() for image in images])
    torch.testing.assert_close(alone, ours.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- metrics that need files


@pytest.mark.parametrize("name", NEED_FILES)
def test_metrics_needing_a_download_fail_clearly_offline(name, monkeypatch, tmp_path):
    """With no network (the download refused) and an empty cache, the error names the folder for pyiqa's file."""
    import urllib.error

    from pyiqa.utils import download_util

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"network disabled by the test ({url})")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", os.path.join(str(tmp_path), "pyiqa"))
    monkeypatch.setattr(download_util, "download_url_to_file", refuse)
    with pytest.raises(MetricUnavailableError, match="place pyiqa's weight file") as error:
        create_metric("pyiqa:" + name)
    assert weights_dir() in str(error.value)


@pytest.mark.skipif(
    importlib.util.find_spec("pkg_resources") is not None,
    reason="pkg_resources is installed here (setuptools < 81), so CLIP metrics would go on to download",
)
def test_metric_missing_a_package_fails_clearly():
    """pyiqa's CLIP metrics import openai-clip, which needs pkg_resources (gone from setuptools 81 on)."""
    with pytest.raises(MetricUnavailableError, match="needs a package.*pkg_resources"):
        create_metric("pyiqa:clipiqa")


# ---------------------------------------------------------------- the built-in PIQE against pyiqa's

MATLAB_RGB2GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def eight_bit(images: torch.Tensor) -> torch.Tensor:
    """Images as a decoded 8-bit file holds them: values k / 255."""
    return torch.round(255 * images) / 255


def matlab_grey(images: torch.Tensor, block: int = 16) -> torch.Tensor:
    """What MATLAB's piqe blocks: ``rgb2gray`` of the uint8 image (rounded to integers), padded at the bottom
    and right to a multiple of 16 by ``padarray(..., 'symmetric', 'post')``; as (N, 1, H', W') in [0, 1].

    pyiqa's own preprocessing differs in both steps (unrounded YIQ luma; padding by ``size % 16`` rows and
    columns instead of up to the next multiple, then whole blocks only), so feeding it this grey image tests
    the rest of its PIQE (MSCN, block criteria, pooling) against the built-in under MATLAB's preprocessing.
    """
    red, green, blue = images.double().unbind(dim=1)
    grey = torch.round(255 * (MATLAB_RGB2GRAY[0] * red + MATLAB_RGB2GRAY[1] * green + MATLAB_RGB2GRAY[2] * blue))
    grey = grey[:, None]
    rows, columns = (-side % block for side in grey.shape[-2:])
    grey = torch.cat([grey, grey.flip(-2)[..., :rows, :]], dim=-2)
    grey = torch.cat([grey, grey.flip(-1)[..., :columns]], dim=-1)
    return grey / 255


def piqe_differences(batches, pyiqa_input) -> tuple[float, list[str]]:
    builtin = create_metric("piqe")
    assert metric_info("piqe").backend == "builtin"
    model = direct("piqe")
    report, worst = [], 0.0
    for label, images in batches.items():
        with torch.no_grad():  # in the images' own dtype (float64 for MATLAB's double)
            ours = builtin(images).reshape(-1)
            theirs = model(pyiqa_input(images)).reshape(-1).to(ours.dtype)
        differences = (ours - theirs).abs()
        worst = max(worst, differences.max().item())
        report.append(
            f"  {label}: built-in {[round(v, 4) for v in ours.tolist()]}, pyiqa "
            f"{[round(v, 4) for v in theirs.tolist()]}, |diff| {[round(v, 4) for v in differences.tolist()]}"
        )
    return worst, report


def show(capsys, title: str, report: list[str]) -> None:
    with capsys.disabled():
        print(f"\n{title}\n" + "\n".join(report))


def test_builtin_piqe_equals_pyiqa_piqe_where_pyiqa_preprocesses_as_matlab(batches, capsys):
    """8-bit grey images whose sides leave 0 or 8 over 16 (pyiqa's padding by ``size % 16`` then is MATLAB's)."""
    chosen = {
        label: eight_bit(images.mean(dim=1, keepdim=True)).expand(-1, 3, -1, -1).contiguous()
        for label, images in batches.items()
        if label in ("256x256", "16-bit grey 120x200")
    }
    worst, report = piqe_differences(chosen, lambda images: images)
    show(capsys, "built-in piqe vs pyiqa piqe, 8-bit grey images, sides = 0 or 8 mod 16:", report)
    assert worst <= BUILTIN_PIQE_TOLERANCE, "\n" + "\n".join(report)


def test_builtin_piqe_equals_pyiqa_piqe_core_on_matlab_preprocessed_images(batches, capsys):
    """Every image (8-bit RGB, odd sizes included), pyiqa given MATLAB's grey, padded image.

    In float64 (MATLAB's double): in float32 a block whose variance or segment deviation lies within rounding
    of a threshold can be classed differently by the two (seen: 0.105 points on one 300x300 texture).
    """
    chosen = {label: eight_bit(images).double() for label, images in batches.items()}
    worst, report = piqe_differences(chosen, matlab_grey)
    show(capsys, "built-in piqe vs pyiqa piqe on MATLAB's preprocessed grey image:", report)
    assert worst <= BUILTIN_PIQE_TOLERANCE, "\n" + "\n".join(report)


@pytest.mark.xfail(
    strict=False,
    reason="pyiqa's piqe preprocesses unlike MATLAB's: it takes the luma of the float "
    "image unrounded (YIQ weights), where MATLAB's rgb2gray of a uint8 image rounds (the built-in "
    "rounds every image so, 16-bit grey included), and it pads by size % 16 (97x131: 1 row, 3 "
    "columns, then only whole blocks) instead of up to the next multiple of 16",
)
def test_builtin_piqe_equals_pyiqa_piqe_as_called(batches, capsys):
    """The project's PIQE and pyiqa's, both called on the same images as they are."""
    worst, report = piqe_differences(batches, lambda images: images)
    show(capsys, "built-in piqe vs pyiqa piqe, same images as they are:", report)
    assert worst <= BUILTIN_PIQE_TOLERANCE, "\n" + "\n".join(report)
