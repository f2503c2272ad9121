"""Fidelity evaluation: feature extractors, Frechet statistics and distance, quality subsets, cached reference
statistics, Inception Score and CLIP similarities, on tiny random models built from configs (no downloads)."""

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torch import nn

import iqa_adapter.datasets
from iqa_adapter.annotate import ScoreTable
from iqa_adapter.evaluation.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SPECS,
    create_extractor,
    inception_available,
    normalise,
    resize_shorter_and_crop,
)
from iqa_adapter.evaluation.fidelity import (
    ClipScorer,
    FrechetStatistics,
    frechet_distance,
    inception_score,
    reference_statistics,
    top_quality_subsets,
)
from iqa_adapter.metrics import QualityMetric, register_metric
from iqa_adapter.metrics.pyiqa_backend import MetricUnavailableError


@register_metric
class FidelityConv(QualityMetric):
    """A small random conv net (test metric) whose layers serve as features."""

    name = "test-fidelity-conv"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 5, 3, stride=2))

    def forward(self, images):
        return self.body(images).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- tiny models and data


@pytest.fixture(scope="module")
def dinov2(dinov2_folder):
    return create_extractor(f"dinov2:{dinov2_folder}")


def textures(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random textures in [0, 1]: smoothed noise of random contrast plus stripes of random frequency."""
    generator = torch.Generator().manual_seed(seed)
    noise = F.avg_pool2d(torch.rand(count, 3, size + 2, size + 2, generator=generator), 3, stride=1)
    frequency = 0.2 + torch.rand(count, 1, 1, 1, generator=generator)
    stripes = torch.sin(torch.arange(size).view(1, 1, 1, size) * frequency)
    contrast = torch.rand(count, 1, 1, 1, generator=generator)
    return (0.5 + contrast * (noise - 0.5) + 0.2 * stripes).clamp(0, 1)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma) + 1
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    padded = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    rows = F.conv2d(padded, kernel, groups=3)
    return F.conv2d(F.pad(rows, (0, 0, radius, radius), mode="reflect"), kernel.transpose(2, 3), groups=3)


def direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's formula with scipy's sqrtm."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root))


# ---------------------------------------------------------------- feature extractors


def test_dinov2_gives_the_normed_cls_token_of_normalised_224_pixel_images(dinov2, dinov2_folder):
    from transformers import Dinov2Model

    images = textures(3, size=224)
    model = Dinov2Model.from_pretrained(dinov2_folder).eval()
    with torch.no_grad():
        outputs = model(pixel_values=normalise(images, IMAGENET_MEAN, IMAGENET_STD))
    expected = outputs.last_hidden_state[:, 0]  # transformers' last_hidden_state is after the final layer norm
    features = dinov2(images)
    assert features.dtype == torch.float32 and features.shape == (3, 32) and dinov2.feature_dim == 32
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    assert dinov2(textures(2, size=40)[..., :30]).shape == (2, 32)  # any size is resized to 224 x 224

    description = dinov2.describe()
    assert description["model"] == str(dinov2_folder) and description["input_size"] == 224
    assert "bicubic" in description["resize"] and description["normalisation"] == "ImageNet mean and std"
    assert len(description["weights"]) == 32


def test_extractors_run_in_slices_with_the_same_result(dinov2):
    images = textures(5)
    whole = dinov2(images)
    dinov2.max_batch = 2
    try:
        torch.testing.assert_close(dinov2(images), whole, rtol=1e-5, atol=1e-5)
    finally:
        del dinov2.max_batch  # back to the class default
    assert dinov2(images[:0]).shape == (0, 32)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        dinov2(images[0])


def test_clip_extractor_gives_get_image_features_of_clip_preprocessed_images(clip_folder):
    from transformers import CLIPModel

    extractor = create_extractor(f"clip:{clip_folder}")
    images = textures(3)  # already the tiny model's 32 x 32
    model = CLIPModel.from_pretrained(clip_folder).eval()
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD))
    expected = expected if torch.is_tensor(expected) else expected.pooler_output
    assert extractor.feature_dim == 16 and extractor.describe()["input_size"] == 32
    torch.testing.assert_close(extractor(images), expected, rtol=1e-5, atol=1e-5)


def test_clip_preprocessing_geometry_matches_the_clip_image_processor():
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4: the PIL processor is CLIPImageProcessor
        from transformers import CLIPImageProcessor as Processor
    image = textures(1, size=96, seed=3)[:, :, 10:70]  # 60 x 96: the shorter side is the height
    pixels = Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    processor = Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    expected = torch.as_tensor(np.asarray(processor(images=pixels, return_tensors="np")["pixel_values"]))
    ours = normalise(
        resize_shorter_and_crop(torch.from_numpy(np.asarray(pixels) / 255).permute(2, 0, 1)[None].float(), 32),
        CLIP_MEAN,
        CLIP_STD,
    )
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    # PIL rounds the resized image to 8 bits; torch keeps floats: within about one grey level
    assert (ours - expected).abs().max() < 1.5 / 255 / min(CLIP_STD)


def test_metric_features_wrap_the_reference_encoder():
    extractor = create_extractor("features:test-fidelity-conv:body.2")
    images = textures(4)
    with torch.no_grad():
        expected = extractor.encoder.metric.body(images).mean(dim=(2, 3))
    assert extractor.feature_dim == 5
    torch.testing.assert_close(extractor(images), expected)
    assert extractor.describe()["model"] == "test-fidelity-conv:body.2"


def test_specs_and_offline_hub_ids_fail_fast_with_one_line():
    for spec in ("dinov3", "clip:", "features"):
        with pytest.raises(ValueError, match="valid: dinov2") as error:
            create_extractor(spec)
        assert all(name in str(error.value) for name in SPECS)
    for build in (lambda: create_extractor("dinov2:someone/missing"), lambda: ClipScorer("someone/missing")):
        with pytest.raises(ValueError, match="local cache") as error:
            build()
        assert "\n" not in str(error.value) and "someone/missing" in str(error.value)


@pytest.mark.skipif(inception_available(), reason="torch-fidelity is installed: the unavailable path is not taken")
def test_inception_without_torch_fidelity_says_what_to_install():
    with pytest.raises(MetricUnavailableError, match=r"iqa-adapter\[fid\]"):
        create_extractor("inception")


needs_torch_fidelity = pytest.mark.skipif(
    not inception_available(),
    reason="torch-fidelity (with a working torchvision) is not installed; "
    "`make test-pyiqa` builds an environment where it is",
)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 with random weights, saved as its weights file is (the real one is a
    download). Built by skipping the network's own weight loading once."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    torch.save({}, folder / "empty.pth")
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(folder / "empty.pth")
        )
    torch.save(network.state_dict(), folder / "random.pth")
    return folder / "random.pth"


class Unpicklable:
    """Anything a pickle could run code through."""


@needs_torch_fidelity
def test_inception_follows_torch_fidelitys_conventions(random_inception_weights, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = create_extractor(f"inception:{random_inception_weights}")
    images = textures(3, size=64)
    features, logits = extractor.features_and_logits(images)
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    torch.testing.assert_close(extractor(images), features)
    # torch-fidelity's own network on the 8-bit images it expects (it resizes them to 299 itself)
    direct = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(random_inception_weights)
    ).eval()
    quantised = (images * 255).round().to(torch.uint8)
    with torch.no_grad():
        expected_features, expected_logits = direct(quantised)
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(logits, expected_logits)
    score, spread = inception_score(logits, splits=1)
    assert score >= 1.0 and spread == 0.0
    assert extractor.preprocessing()["input_size"] == 299

    pickled = tmp_path / "code.pth"
    torch.save({"weight": torch.zeros(1), "extra": Unpicklable()}, pickled)
    with pytest.raises(ValueError, match="not a plain state dict of tensors.*refusing to unpickle"):
        create_extractor(f"inception:{pickled}")
    with pytest.raises(MetricUnavailableError, match="does not exist"):
        create_extractor(f"inception:{tmp_path / 'missing.pth'}")


# ---------------------------------------------------------------- Frechet statistics and distance


def test_streaming_statistics_equal_one_shot_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(101, 6)) * [1, 2, 3, 4, 5, 6] + 1e6  # a large mean: no cancellation allowed
    whole = FrechetStatistics.from_features(features)
    streamed = FrechetStatistics()  # the feature size comes with the first update
    for part in np.array_split(features, 7):
        streamed.update(torch.from_numpy(part))
    merged = FrechetStatistics.from_features(features[:40]).merge(FrechetStatistics.from_features(features[40:]))
    into_empty = FrechetStatistics().merge(merged)
    for statistics in (whole, streamed, merged, into_empty):
        assert statistics.count == 101
        np.testing.assert_allclose(statistics.mean, features.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(statistics.covariance, np.cov(features, rowvar=False), rtol=1e-8, atol=1e-8)

    whole.description = {"data": "somewhere", "images": 101}
    whole.save(tmp_path / "stats.npz")
    assert [path.name for path in tmp_path.iterdir()] == ["stats.npz"]
    loaded = FrechetStatistics.load(tmp_path / "stats.npz")
    assert loaded.count == 101 and loaded.description == whole.description
    np.testing.assert_array_equal(loaded.mean, whole.mean)
    np.testing.assert_allclose(loaded.covariance, whole.covariance, rtol=1e-12)
    with np.load(tmp_path / "stats.npz", allow_pickle=False) as data:  # pytorch-fid's keys
        assert {"mu", "sigma", "count", "description"} <= set(data.files)

    with pytest.raises(ValueError, match="shape"):
        whole.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        FrechetStatistics.from_features(features[:1]).save(tmp_path / "one.npz")


def test_frechet_distance_matches_scipy_is_symmetric_and_zero_for_the_same_set():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) + 0.5
    stats_a, stats_b = FrechetStatistics.from_features(a), FrechetStatistics.from_features(b)
    distance = frechet_distance(stats_a, stats_b)
    assert distance == pytest.approx(direct_frechet(a, b), rel=1e-6)
    assert frechet_distance(stats_b, stats_a) == pytest.approx(distance, rel=1e-9)
    assert frechet_distance(stats_a, FrechetStatistics.from_features(a)) <= 1e-6 * np.trace(stats_a.covariance)
    few = FrechetStatistics.from_features(a[:4])  # singular covariance: fewer images than dimensions
    assert frechet_distance(few, few) <= 1e-6 * np.trace(few.covariance)
    with pytest.raises(ValueError, match="8-d and 3-d"):
        frechet_distance(stats_a, FrechetStatistics.from_features(a[:, :3]))


def test_frechet_distance_of_dinov2_features_grows_with_blur(dinov2):
    images = textures(48, size=48)
    reference = FrechetStatistics.from_features(dinov2(images))
    assert frechet_distance(reference, FrechetStatistics.from_features(dinov2(images))) <= 1e-6 * np.trace(
        reference.covariance
    )
    distances = [
        frechet_distance(reference, FrechetStatistics.from_features(dinov2(gaussian_blur(images, sigma))))
        for sigma in (0.5, 1.0, 2.0, 4.0)
    ]
    assert all(near < far for near, far in itertools.pairwise(distances)), distances


def test_inception_score_follows_torch_fidelity():
    assert inception_score(torch.zeros(20, 5), splits=2) == pytest.approx((1.0, 0.0))  # one class for all: 1
    confident = 50 * torch.eye(4).repeat(5, 1)  # four classes, each image sure of its own
    assert inception_score(confident, splits=1)[0] == pytest.approx(4.0, rel=1e-6)
    logits = np.random.default_rng(2).normal(size=(30, 7)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    marginal = probabilities.mean(axis=0)
    expected = np.exp((probabilities * (np.log(probabilities) - np.log(marginal))).sum(axis=1).mean())
    assert inception_score(logits, splits=1) == pytest.approx((expected, 0.0))
    assert inception_score(np.log(probabilities), splits=1)[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits, splits=31)


# ---------------------------------------------------------------- quality subsets


def score_table() -> ScoreTable:
    """Ten images whose quality falls with the index in both metrics; ``k00`` has a NaN score."""
    keys = [f"k{index:02d}" for index in range(10)]
    sharpness = np.arange(10, 0, -1, dtype=np.float32)  # higher is better
    noise = np.arange(10, dtype=np.float32) ** 2  # lower is better
    sharpness[0] = np.nan
    return ScoreTable(keys, ["sharpness", "noise", "unused"], np.stack([sharpness, noise, np.zeros(10)], axis=1))


def test_top_quality_subsets_orient_average_and_leave_out_nan():
    orientation = {"sharpness": True, "noise": False}
    subsets = top_quality_subsets(score_table(), ["sharpness", "noise"], [25, 10, 50], orientation)
    # nine finite images: 25 % -> round(2.25) = 2, 10 % -> 1 (at least 1), 50 % -> round(4.5) = 5
    assert subsets == {"top25": {"k01", "k02"}, "top10": {"k01"}, "top50": {"k01", "k02", "k03", "k04", "k05"}}
    flipped = top_quality_subsets(score_table(), ["noise"], [12.5], {"noise": True})
    assert flipped == {"top12.5": {"k09"}}  # noise taken as higher-is-better picks the noisiest image
    with pytest.raises(ValueError, match="no metric 'aes'"):
        top_quality_subsets(score_table(), ["aes"], [10], {"aes": True})
    with pytest.raises(ValueError, match="higher_is_better"):
        top_quality_subsets(score_table(), ["noise"], [10], {})
    with pytest.raises(ValueError, match="same score"):
        top_quality_subsets(score_table(), ["unused"], [10], {"unused": True})
    with pytest.raises(ValueError, match=r"\(0, 100\]"):
        top_quality_subsets(score_table(), ["noise"], [0], orientation)


# ---------------------------------------------------------------- cached reference statistics


def png_bytes(index: int) -> bytes:
    pixels = (textures(1, size=24 + 4 * index, seed=index)[0].permute(1, 2, 0).numpy() * 255).round()
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def reference_folder(tmp_path) -> Path:
    """Six captioned PNG images of different sizes and a corrupt one."""
    folder = tmp_path / "reference"
    folder.mkdir()
    for index in range(6):
        (folder / f"img{index:02d}.png").write_bytes(png_bytes(index))
        (folder / f"img{index:02d}.txt").write_text(f"caption {index}")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def count_decodes(monkeypatch) -> list[bytes]:
    decoded: list[bytes] = []
    original = iqa_adapter.datasets.decode_image
    monkeypatch.setattr(
        iqa_adapter.datasets, "decode_image", lambda data, *rest: decoded.append(data) or original(data, *rest)
    )
    return decoded


def direct_features(extractor, indices, resize: int = 16) -> np.ndarray:
    images = [
        Image.open(io.BytesIO(png_bytes(index))).convert("RGB").resize((resize, resize), Image.Resampling.BICUBIC)
        for index in indices
    ]
    pixels = torch.stack([torch.from_numpy(np.asarray(image) / 255).permute(2, 0, 1).float() for image in images])
    return extractor(pixels).numpy()


def test_reference_statistics_of_the_set_and_subsets_are_cached(dinov2, reference_folder, tmp_path, monkeypatch):
    decoded = count_decodes(monkeypatch)
    run = dict(resize=16, batch_size=4, progress=False)
    subsets = {"top25": {"img01", "img04"}, "odd": {"img01", "img03", "img05", "gone"}}
    first = reference_statistics(str(reference_folder), dinov2, tmp_path / "cache", subsets=subsets, **run)
    assert len(decoded) == 7 and set(first) == {"all", "top25", "odd"}
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3

    for name, indices in {"all": range(6), "top25": (1, 4), "odd": (1, 3, 5)}.items():
        expected = FrechetStatistics.from_features(direct_features(dinov2, indices))
        assert first[name].count == len(indices)
        np.testing.assert_allclose(first[name].mean, expected.mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(first[name].covariance, expected.covariance, rtol=1e-4, atol=1e-5)
    description = first["all"].description
    assert description["skipped"] == 1 and "broken" in description["skipped_examples"][0]
    assert description["extractor"] == dinov2.describe() and description["resize"] == 16
    assert first["odd"].description["not_found"] == 1 and first["odd"].description["skipped"] == 0

    decoded.clear()
    again = reference_statistics(str(reference_folder), dinov2, tmp_path / "cache", subsets=subsets, **run)
    assert decoded == []  # everything came from the cache
    for name in first:
        np.testing.assert_array_equal(again[name].covariance, first[name].covariance)

    more = reference_statistics(
        str(reference_folder), dinov2, tmp_path / "cache", subsets={**subsets, "pair": {"img00", "img02"}}, **run
    )
    assert len(decoded) == 2 and more["pair"].count == 2  # only the new subset's images were read
    with pytest.raises(ValueError, match="at least 2"):
        reference_statistics(str(reference_folder), dinov2, tmp_path / "cache", subsets={"one": {"img00"}}, **run)
    with pytest.raises(ValueError, match="at least 2"):  # two keys, but one image cannot be read
        reference_statistics(
            str(reference_folder), dinov2, tmp_path / "cache", subsets={"half": {"img00", "broken"}}, **run
        )


# ---------------------------------------------------------------- CLIP-T and CLIP-I


def test_clip_scores_are_100_times_the_cosine(clip_folder):
    from transformers import AutoTokenizer, CLIPModel

    scorer = ClipScorer(str(clip_folder))
    images = textures(3)
    captions = ["a red circle", "stripes and noise", "word " * 100]  # the last one is longer than 77 tokens
    model, tokenizer = CLIPModel.from_pretrained(clip_folder).eval(), AutoTokenizer.from_pretrained(clip_folder)
    tokens = tokenizer(captions, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_embeddings = model.get_image_features(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD))
        text_embeddings = model.get_text_features(**tokens)
    image_embeddings, text_embeddings = (
        output if torch.is_tensor(output) else output.pooler_output for output in (image_embeddings, text_embeddings)
    )
    expected = 100 * F.cosine_similarity(image_embeddings, text_embeddings, dim=-1)
    torch.testing.assert_close(scorer.text_image(images, captions), expected, rtol=1e-4, atol=1e-4)

    torch.testing.assert_close(scorer.image_image(images, images), torch.full((3,), 100.0), rtol=0, atol=1e-3)
    assert (scorer.image_image(images, images.flip(0))[[0, 2]] < 100).all()
    with pytest.raises(ValueError, match="one caption per image"):
        scorer.text_image(images, captions[:2])
    assert scorer.describe()["score"].startswith("100 * cosine")
