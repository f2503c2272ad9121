import pytest
import torch

from iqa_adapter.distortions import FAMILIES, FAMILY_GROUP, FAMILY_GROUPS, distort, random_distortions

LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
RANDOM_FAMILIES = {"motion_blur", "gaussian_noise", "impulse_noise", "saturation", "brightness"}


def scene(count: int = 2, size: int = 48) -> torch.Tensor:
    """Smooth colourful patterns with a few sharp edges, values in [0.1, 0.9]."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for k in range(count):
        red = 0.5 + 0.3 * torch.sin(6 * x + k)
        green = 0.5 + 0.3 * torch.cos(9 * y - 2 * k)
        blue = torch.where((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.06, 0.85, 0.2)
        images.append(torch.stack([red, green, blue]))
    return torch.stack(images)


def luma(images):
    return 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]


def gradient_energy(images, reference):
    return -((images.diff(dim=-1) ** 2).mean() + (images.diff(dim=-2) ** 2).mean())


def distance(images, reference):
    return (images - reference).abs().mean()


def contrast_loss(images, reference):
    return -luma(images).std()


def saturation_change(images, reference):
    chroma = lambda im: (im - luma(im)[:, None]).abs().mean()  # noqa: E731
    return (chroma(images) - chroma(reference)).abs()


def exposure_change(images, reference):
    return (luma(images).mean() - luma(reference).mean()).abs()


# a measure per family that grows with the strength of the degradation
MEASURES = {
    "gaussian_blur": gradient_energy,
    "motion_blur": gradient_energy,
    "downsample": gradient_energy,
    "gaussian_noise": distance,
    "impulse_noise": distance,
    "jpeg": distance,
    "pixelate": distance,
    "quantization": distance,
    "contrast": contrast_loss,
    "saturation": saturation_change,
    "brightness": exposure_change,
}


def test_required_families_are_present():
    required = {
        "gaussian_blur",
        "motion_blur",
        "gaussian_noise",
        "jpeg",
        "contrast",
        "saturation",
        "brightness",
        "downsample",
        "pixelate",
    }
    assert required <= set(FAMILIES)
    assert set(MEASURES) == set(FAMILIES), "every family needs a monotonicity measure here"


def test_every_family_is_in_exactly_one_group():
    grouped = [family for families in FAMILY_GROUPS.values() for family in families]
    assert sorted(grouped) == sorted(FAMILIES)
    assert FAMILY_GROUP["impulse_noise"] == FAMILY_GROUP["gaussian_noise"] != FAMILY_GROUP["motion_blur"]


@pytest.mark.parametrize("family", FAMILIES)
def test_level_zero_is_identity_and_output_is_valid(family):
    images = scene()
    same = distort(images, family, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same, images) and same.data_ptr() != images.data_ptr()
    out = distort(images, family, 1.0, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.01, "level 1 must be clearly visible"


@pytest.mark.parametrize("family", FAMILIES)
def test_effect_grows_with_level(family):
    images = scene()
    measure = MEASURES[family]
    values = [
        float(measure(distort(images, family, level, torch.Generator().manual_seed(3)), images)) for level in LEVELS
    ]
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:])), values
    assert values[-1] > values[1] > values[0], values


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_generator_is_deterministic(family):
    images = scene(3)
    first = distort(images, family, 0.6, torch.Generator().manual_seed(7))
    second = distort(images, family, 0.6, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    if family in RANDOM_FAMILIES:
        different = [distort(images, family, 0.6, torch.Generator().manual_seed(seed)) for seed in range(8, 12)]
        assert any(not torch.equal(first, other) for other in different)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_image_levels(family):
    images = scene(3)
    levels = torch.tensor([0.0, 0.4, 1.0])
    out = distort(images, family, levels, torch.Generator().manual_seed(0))
    assert torch.equal(out[0], images[0])
    assert not torch.equal(out[1], images[1]) and not torch.equal(out[2], images[2])
    if family not in RANDOM_FAMILIES:  # no random draws: the batch is the same as one image at a time
        for index in (1, 2):
            alone = distort(images[index : index + 1], family, float(levels[index]))
            torch.testing.assert_close(out[index : index + 1], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dtype_and_odd_sizes_are_kept(dtype):
    images = scene(2, size=8).to(dtype)[..., :8, :8]
    for family in FAMILIES:
        out = distort(images, family, 0.8, torch.Generator().manual_seed(0))
        assert out.dtype == dtype and out.shape == images.shape
    wide = torch.rand(1, 3, 9, 31, generator=torch.Generator().manual_seed(0))
    for family in FAMILIES:
        assert distort(wide, family, 1.0, torch.Generator().manual_seed(0)).shape == wide.shape


def test_blur_is_differentiable():
    images = scene().requires_grad_(True)
    distort(images, "gaussian_blur", 0.5).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_errors_name_the_problem():
    images = scene()
    with pytest.raises(ValueError, match="valid families: gaussian_blur, motion_blur"):
        distort(images, "fog", 0.5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        distort(images, "jpeg", torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        distort(images, "jpeg", 1.5)
    with pytest.raises(ValueError, match="at least 8x8"):
        distort(images[..., :4, :4], "jpeg", 0.5)
    with pytest.raises(ValueError, match="float images"):
        distort((images * 255).to(torch.uint8), "jpeg", 0.5)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        distort(images[:, :1], "jpeg", 0.5)
    with pytest.raises(ValueError, match="valid families"):
        random_distortions(images, torch.Generator(), families=("blur",))


def test_random_distortions():
    images = scene(16)
    out, names, levels = random_distortions(images, torch.Generator().manual_seed(0), clean_fraction=0.25)
    again, names_again, levels_again = random_distortions(images, torch.Generator().manual_seed(0), clean_fraction=0.25)
    assert torch.equal(out, again) and names == names_again and torch.equal(levels, levels_again)
    assert len(names) == 16 and levels.shape == (16,) and levels.dtype == torch.float32
    assert None in names and any(name is not None for name in names)
    for image, result, name, level in zip(images, out, names, levels):
        if name is None:
            assert level == 0 and torch.equal(result, image)
        else:
            assert name in FAMILIES and 0 < level < 1
            assert level < 0.2 or not torch.equal(result, image)  # the faintest levels may be invisible

    out, names, levels = random_distortions(images, torch.Generator().manual_seed(1), families=("jpeg", "contrast"))
    assert set(names) <= {"jpeg", "contrast"} and (levels > 0).all()

    out, names, levels = random_distortions(images, torch.Generator().manual_seed(1), clean_fraction=1.0)
    assert names == [None] * 16 and torch.equal(out, images) and (levels == 0).all()
