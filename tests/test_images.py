"""Reading images: every PIL mode to RGB without clipping, and one-line errors that name the file."""

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_adapter.images import (
    ImageReadError,
    open_image,
    read_rgb,
    resized,
    rgb_array,
    rgb_tensor,
    to_8bit,
    to_pil_images,
    to_rgb,
    to_uint8_arrays,
)

RAMP16 = np.linspace(0, 65535, 8 * 8).reshape(8, 8).astype(np.uint16)


def test_sixteen_bit_grey_is_scaled_to_eight_bits_and_kept_exact_as_float(tmp_path):
    Image.fromarray(RAMP16).save(tmp_path / "deep.png")
    image = open_image(tmp_path / "deep.png")
    assert image.mode == "I;16"
    assert np.asarray(image.convert("RGB")).max() == 255 and np.asarray(image.convert("RGB")).mean() > 250  # PIL clips
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[..., 0], np.round(RAMP16 / 65535 * 255).astype(np.uint8))
    values = rgb_array(image)
    assert values.dtype == np.float32 and np.allclose(values[..., 1], RAMP16 / 65535, atol=1e-7)
    assert rgb_tensor(image).shape == (3, 8, 8)


def test_thirty_two_bit_and_float_grey(tmp_path):
    as_int = Image.fromarray(RAMP16.astype(np.int32), mode="I")
    assert np.allclose(rgb_array(as_int)[..., 0], RAMP16 / 65535, atol=1e-7)
    as_float = Image.fromarray((RAMP16 / 65535).astype(np.float32), mode="F")
    assert np.allclose(rgb_array(as_float)[..., 2], RAMP16 / 65535, atol=1e-7)


def test_palette_grey_alpha_and_cmyk_convert_as_pil_does():
    palette = Image.new("P", (4, 4))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.info["transparency"] = 0
    assert tuple(np.asarray(to_rgb(palette))[0, 0]) == (255, 0, 0)
    for mode, colour in (("L", 128), ("LA", (128, 10)), ("RGBA", (1, 2, 3, 0)), ("CMYK", (0, 0, 0, 0))):
        image = Image.new(mode, (3, 3), colour)
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB")))
        assert np.allclose(rgb_array(image), np.asarray(image.convert("RGB")) / 255)


def test_high_depth_images_resize_at_full_precision():
    image = Image.fromarray(RAMP16)
    small = resized(image, (4, 4))
    assert small.mode == "F" and small.size == (4, 4)
    expected = Image.fromarray((RAMP16 / 65535).astype(np.float32), mode="F").resize((4, 4), Image.Resampling.BICUBIC)
    assert np.allclose(rgb_array(small)[..., 0], np.clip(np.asarray(expected), 0, 1), atol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.mkdir(), "is a folder, not an image file"),
        (lambda path: path.write_bytes(b""), "is an empty file"),
        (lambda path: path.write_text("hello"), "is not an image"),
        (
            lambda path: (
                Image.new("RGB", (64, 64), 5).save(path, format="PNG") or path.write_bytes(path.read_bytes()[:70])
            ),
            "truncated or corrupt",
        ),
    ],
)
def test_unreadable_files_are_named(tmp_path, make, message):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(ImageReadError, match=message) as error:
        read_rgb(path, name="--reference 'x.png'")
    assert str(error.value).startswith("--reference 'x.png'") and "\n" not in str(error.value)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="has 40x30 = 1,200 pixels, more than the limit of 1,000"):
        open_image(tmp_path / "a.png", max_pixels=1000)
    assert open_image(tmp_path / "a.png", max_pixels=None).size == (40, 30)
    assert open_image((tmp_path / "a.png").read_bytes()).size == (40, 30)
    assert torch.equal(rgb_tensor(open_image(tmp_path / "a.png")), torch.zeros(3, 30, 40))


def test_tensor_images_go_back_to_the_same_8_bit_pixels():
    """``to_pil_images`` inverts ``rgb_tensor`` exactly, clips out-of-range values, and ``to_8bit`` keeps the same
    values as floats."""
    array = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    tensor = rgb_tensor(Image.fromarray(array))
    assert np.array_equal(np.asarray(to_pil_images(tensor[None])[0]), array)
    assert torch.equal(to_8bit(tensor), tensor)
    outside = torch.tensor([-0.3, 0.5, 1.7]).view(1, 3, 1, 1)
    assert to_uint8_arrays(outside).tolist() == [[[[0, 128, 255]]]]
    assert torch.equal(to_8bit(outside).flatten(), torch.tensor([0.0, 128 / 255, 1.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_pixels_round_to_the_levels_8_bit_files_get(dtype):
    """Half precision rounds ``pixels * 255`` before ``round()`` would (a few percent of values land one level off);
    ``to_8bit`` rounds in float32 and keeps the dtype, so it agrees with ``to_uint8_arrays`` level for level."""
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    rounded = to_8bit(pixels)
    assert rounded.dtype == dtype
    levels = (rounded.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(levels, to_uint8_arrays(pixels))
