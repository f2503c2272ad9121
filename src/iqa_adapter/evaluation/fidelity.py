"""Fidelity and diversity (IQA-Adapter paper, Table 5): Frechet distances to a reference set and to its
highest-quality subsets, Inception Score, and CLIP-T / CLIP-I similarities.

* :class:`FrechetStatistics` accumulates the mean and covariance of features (float64, streaming, mergeable) and
  saves them as ``.npz`` with the keys ``mu`` and ``sigma`` that pytorch-fid and clean-fid use.
* :func:`frechet_distance`: ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
* :func:`reference_statistics` computes, in one pass over a dataset, the statistics of the whole reference set and
  of subsets of it (:func:`top_quality_subsets`: the paper's top 25 % and 10 % by mean quality), and caches them.
* :func:`inception_score` of Inception logits, as torch-fidelity computes it.
* :class:`ClipScorer`: CLIP-T (image vs caption) and CLIP-I (image vs the real image of its caption), 100 x cosine.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..annotate import ScoreTable, collate_by_size
from ..chunks import ChunkBatches, ItemLoader
from ..datasets import SUPPORTED_INPUTS, DatasetError, load_image, open_dataset
from ..io_utils import atomic_write
from .features import DEFAULT_CLIP, MAX_BATCH, ClipExtractor, FeatureExtractor, load_pretrained, pooled

ALL = "all"
"""Name of the statistics of the whole reference set."""

__all__ = [
    "ALL",
    "ClipScorer",
    "FrechetStatistics",
    "frechet_distance",
    "inception_score",
    "reference_statistics",
    "top_quality_subsets",
]


# ---------------------------------------------------------------- statistics and distance


class FrechetStatistics:
    """Streaming mean and covariance of feature vectors, in float64.

    Batches are combined with Chan et al.'s parallel update: the count, the mean and the sum of outer products of
    the deviations from the mean. This is the textbook "sum of outer products" kept about the running mean, which
    avoids the cancellation of ``sum(x x^T) - n mu mu^T`` when features have a large mean. Updating in slices,
    merging and computing at once give the same result up to rounding. The covariance is unbiased (``n - 1``), as
    ``numpy.cov`` in pytorch-fid, clean-fid and dgm-eval. ``dim`` (the feature size) may be left to the first
    :meth:`update`.
    """

    def __init__(self, dim: int | None = None, description: dict | None = None):
        self.dim: int | None = None
        self.count = 0
        self.description = dict(description or {})
        if dim is not None:
            self._set_dim(int(dim))

    def _set_dim(self, dim: int) -> None:
        self.dim = dim
        self._mean = np.zeros(dim)
        self._scatter = np.zeros((dim, dim))

    @classmethod
    def from_features(cls, features: torch.Tensor | np.ndarray, description: dict | None = None) -> FrechetStatistics:
        """Statistics of the features (N, D)."""
        statistics = cls(description=description)
        statistics.update(features)
        return statistics

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add features (N, D)."""
        if torch.is_tensor(features):
            features = features.detach().cpu().numpy()
        values = np.asarray(features, dtype=np.float64)
        if values.ndim == 2 and self.dim is None:
            self._set_dim(values.shape[1])
        if values.ndim != 2 or values.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("features hold NaN or infinite values; check the feature extractor and the images")
        if len(values):
            mean = values.mean(axis=0)
            deviations = values - mean
            self._combine(len(values), mean, deviations.T @ deviations)

    def merge(self, other: FrechetStatistics) -> FrechetStatistics:
        """Add the features counted by ``other`` (this object, updated, is returned)."""
        if not other.count:
            return self
        if self.dim is None:
            self._set_dim(other.dim)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of {other.dim}-d features into {self.dim}-d ones")
        self._combine(other.count, other._mean, other._scatter)
        return self

    def _combine(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        total = self.count + count
        delta = mean - self._mean
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.count * count / total)
        self._mean = self._mean + delta * (count / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        """Mean feature (D,)."""
        if self.count == 0:
            raise ValueError("no features were added; the mean is undefined")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (D, D)."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature vectors, got {self.count}")
        return self._scatter / (self.count - 1)

    def save(self, path: str | Path) -> None:
        """Write ``mu``, ``sigma``, ``count`` and ``description`` (a JSON string) to a ``.npz`` file, atomically."""
        arrays = {
            "mu": self.mean,
            "sigma": self.covariance,
            "count": np.int64(self.count),
            "description": np.array(json.dumps(self.description, sort_keys=True)),
        }

        def write(temporary: str) -> None:
            with open(temporary, "wb") as handle:  # a handle: np.savez would append .npz to a name
                np.savez(handle, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path) -> FrechetStatistics:
        """Read statistics written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
                count, description = int(data["count"]), json.loads(str(data["description"]))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path} is not a Frechet statistics file with mu, sigma, count and description "
                f"({' '.join(str(error).split())}); delete it to compute it again"
            ) from None
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} do not fit together")
        statistics = cls(description=description)
        statistics.dim, statistics.count, statistics._mean, statistics._scatter = (
            len(mu),
            count,
            mu,
            sigma * (count - 1),
        )
        return statistics


def frechet_distance(a: FrechetStatistics, b: FrechetStatistics) -> float:
    """The Frechet distance ``||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))``.

    ``Tr((S_a S_b)^(1/2))`` is computed as ``Tr((R S_b R)^(1/2))`` with ``R = S_a^(1/2)`` (the two matrices are
    similar): two symmetric eigendecompositions, with round-off eigenvalues below 0 set to 0. This is exact for
    singular covariances (fewer images than feature dimensions), where ``scipy.linalg.sqrtm(S_a S_b)`` as in
    pytorch-fid needs its ``eps`` offset on the diagonal and returns small imaginary parts; on well-conditioned
    covariances both agree. The result is clipped at 0 (round-off), so identical statistics give 0.
    """
    if a.dim != b.dim:
        raise ValueError(f"cannot compare statistics of {a.dim}-d and {b.dim}-d features (other feature extractors)")
    sigma_a, sigma_b = a.covariance, b.covariance
    difference = a.mean - b.mean
    distance = (
        difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * _trace_sqrt_product(sigma_a, sigma_b)
    )
    return max(float(distance), 0.0)


def _trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``Tr((sigma_a sigma_b)^(1/2))`` for symmetric positive semi-definite matrices."""
    values, vectors = np.linalg.eigh((sigma_a + sigma_a.T) / 2)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root @ sigma_b @ root
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum())


def inception_score(logits: torch.Tensor | np.ndarray, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) from Inception logits (N, C), as torch-fidelity's ``isc``.

    The rows are shuffled with ``numpy.random.RandomState(seed)`` (torch-fidelity's default seed), cut into
    ``splits`` parts, and each part scores ``exp(mean KL(p(y|x) || p(y)))`` in float64. Give the unbiased logits of
    :meth:`iqa_adapter.evaluation.features.InceptionExtractor.features_and_logits` (torch-fidelity's
    ``logits_unbiased``); class probabilities are passed as their logarithm.
    """
    values = torch.as_tensor(
        np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits), dtype=torch.float64
    )
    if values.ndim != 2:
        raise ValueError(f"expected logits of shape (N, classes), got {tuple(values.shape)}")
    count = len(values)
    if not 1 <= splits <= count:
        raise ValueError(f"splits must be between 1 and the number of images ({count}), got {splits}")
    values = values[np.random.RandomState(seed).permutation(count)]
    probabilities, log_probabilities = values.softmax(dim=1), values.log_softmax(dim=1)
    scores = []
    for index in range(splits):
        part = slice(index * count // splits, (index + 1) * count // splits)
        marginal = probabilities[part].mean(dim=0, keepdim=True)
        divergence = (probabilities[part] * (log_probabilities[part] - marginal.log())).sum(dim=1)
        scores.append(divergence.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------- quality subsets


def top_quality_subsets(
    table: ScoreTable, metrics: Sequence[str], percents: Sequence[float], higher_is_better: Mapping[str, bool]
) -> dict[str, set[str]]:
    """The keys of the best ``p`` % of a reference set by mean quality, for each ``p`` in ``percents``, named
    ``top<p>`` (``top25``, ``top10``).

    As the paper's top-n % subsets of MS COCO ("the average score across all IQA/IAA metrics"): every metric is
    z-normalised over the reference set (population std), lower-is-better metrics are negated, the z-scores are
    averaged, and the ``round(N * p / 100)`` keys (at least 1) with the highest mean are taken; ties keep the table
    order. Keys with a NaN or infinite score in any of ``metrics`` are left out of the normalisation and of every
    subset, and N counts only the others.
    """
    metrics = list(metrics)
    if not metrics:
        raise ValueError("give at least one metric to rank the reference images by")
    unknown = [name for name in metrics if name not in table.metrics]
    if unknown:
        raise ValueError(f"the score table has no metric {unknown[0]!r}; it has {', '.join(table.metrics)}")
    unoriented = [name for name in metrics if name not in higher_is_better]
    if unoriented:
        raise ValueError(f"higher_is_better does not say whether higher {unoriented[0]!r} scores are better")
    bad = [percent for percent in percents if not 0 < percent <= 100]
    if bad or not percents:
        raise ValueError(f"percents must lie in (0, 100], got {list(percents)}")
    keys = list(table.keys())
    columns = [table.metrics.index(name) for name in metrics]
    scores = np.stack([table.vector(key)[columns] for key in keys]).astype(np.float64) if keys else np.zeros((0, 1))
    usable = np.isfinite(scores).all(axis=1)
    keys, scores = [key for key, keep in zip(keys, usable) if keep], scores[usable]
    if len(keys) < 2:
        raise ValueError(f"only {len(keys)} reference images have finite scores in every metric; need at least 2")
    spread = scores.std(axis=0)
    constant = [name for name, std in zip(metrics, spread) if std == 0]
    if constant:
        raise ValueError(f"metric {constant[0]!r} has the same score for every reference image; leave it out")
    signs = np.array([1.0 if higher_is_better[name] else -1.0 for name in metrics])
    quality = (((scores - scores.mean(axis=0)) / spread) * signs).mean(axis=1)
    order = np.argsort(-quality, kind="stable")
    return {
        f"top{percent:g}": {keys[row] for row in order[: max(1, math.floor(len(keys) * percent / 100 + 0.5))]}
        for percent in percents
    }


# ---------------------------------------------------------------- reference statistics


def reference_statistics(
    data: str,
    extractor: FeatureExtractor,
    cache_dir: str | Path,
    *,
    subsets: Mapping[str, Collection[str]] | None = None,
    resize: int | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, FrechetStatistics]:
    """Frechet statistics of a reference dataset (``"all"``) and of subsets of its keys, cached in ``cache_dir``.

    Args:
        data: any dataset :func:`iqa_adapter.datasets.open_dataset` reads.
        extractor: the feature extractor; its :meth:`~FeatureExtractor.describe` is part of the cache key.
        cache_dir: one ``.npz`` per statistics (:meth:`FrechetStatistics.save`), named after the extractor, the
            subset and a hash of (data path, ``extractor.describe()``, ``resize``, subset name, its keys).
        subsets: ``{name: keys}``, e.g. from :func:`top_quality_subsets`.
        resize: images are resized to ``resize`` x ``resize`` (PIL bicubic) when decoded, before the extractor's
            own preprocessing; ``None`` hands them over at their size.
        batch_size: images per batch; num_workers: data-loader processes that decode images.
        progress: show a progress bar and say how many images were skipped.

    Only the statistics missing from the cache are computed, all in one pass that decodes only the images they
    need; a call whose statistics are all cached reads no image. Unreadable images are skipped and counted
    (``description["skipped"]``, with examples; subsets count their own), as are later samples with an already
    seen key (``description["duplicate_keys"]``); ``description["not_found"]`` counts a subset's keys without a
    readable image. The cache holds
    only finished statistics: an interrupted pass starts again from the beginning. The cache key is the data's
    path, not its content: delete the cache after changing the images.
    """
    subsets = {name: frozenset(keys) for name, keys in (subsets or {}).items()}
    if ALL in subsets:
        raise ValueError(f"{ALL!r} names the statistics of the whole reference set; give the subset another name")
    wanted: dict[str, frozenset[str] | None] = {ALL: None, **subsets}
    source = str(Path(data).expanduser().absolute())
    identity = {"data": source, "extractor": extractor.describe(), "resize": resize}
    descriptions = {
        name: {**identity, "subset": name, "subset_keys": _keys_digest(keys)} for name, keys in wanted.items()
    }
    paths = {
        name: _cache_path(Path(cache_dir), extractor.name, description) for name, description in descriptions.items()
    }
    missing = {name: wanted[name] for name in wanted if not paths[name].exists()}
    if missing:
        computed = _compute_statistics(
            data, extractor, missing, resize=resize, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
        for name, statistics in computed.items():
            statistics.description = {**descriptions[name], **statistics.description}
            statistics.save(paths[name])
    return {name: FrechetStatistics.load(path) for name, path in paths.items()}


def _keys_digest(keys: frozenset[str] | None) -> str | None:
    return None if keys is None else hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _cache_path(cache_dir: Path, extractor_name: str, description: dict) -> Path:
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    subset = re.sub(r"[^A-Za-z0-9._-]+", "_", description["subset"])
    return cache_dir / f"{extractor_name}_{subset}_{digest}.npz"


def _compute_statistics(
    data: str,
    extractor: FeatureExtractor,
    wanted: Mapping[str, frozenset[str] | None],
    *,
    resize: int | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> dict[str, FrechetStatistics]:
    """One pass over the images that the ``wanted`` statistics need (``None``: every image)."""
    if batch_size < 1 or (resize is not None and resize < 1):
        raise ValueError(f"batch_size and resize must be positive, got {batch_size} and {resize}")
    small = [name for name, keys in wanted.items() if keys is not None and len(keys) < 2]
    if small:
        raise ValueError(f"subset {small[0]!r} has fewer than 2 keys; Frechet statistics need at least 2 images")
    everything = any(keys is None for keys in wanted.values())
    needed = frozenset().union(*(keys for keys in wanted.values() if keys is not None))
    samples, seen, duplicates = [], set(), 0
    for sample in open_dataset(data):
        if sample.key in seen:
            duplicates += 1
        elif everything or sample.key in needed:
            seen.add(sample.key)
            samples.append(sample)
    if not samples:
        raise DatasetError(f"no reference images found in {data!r} for {', '.join(wanted)}; give {SUPPORTED_INPUTS}")

    loader = DataLoader(
        ItemLoader(functools.partial(load_image, resize=resize)),
        batch_sampler=ChunkBatches(samples, (0,), len(samples), batch_size),  # one chunk: all samples
        num_workers=num_workers,
        collate_fn=collate_by_size,
    )
    statistics = {name: FrechetStatistics(extractor.feature_dim) for name in wanted}
    skipped: list[tuple[str, str]] = []  # (key, reason)
    with tqdm(
        total=len(samples),
        unit="img",
        desc=f"reference features ({extractor.name})",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for groups in loader:
            for pairs, images in groups:
                bar.update(len(pairs))
                if images is None:
                    skipped += [(item.sample.key, decoded.reason) for item, decoded in pairs]
                    continue
                pixels = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
                features = extractor(pixels).cpu().numpy()
                keys = [item.sample.key for item, _ in pairs]
                for name, members in wanted.items():
                    rows = [row for row, key in enumerate(keys) if members is None or key in members]
                    statistics[name].update(features[rows])
    if progress and (skipped or duplicates):
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        print(
            f"reference statistics of {data}: skipped {len(skipped)} unreadable images{first} and {duplicates} "
            "samples with a repeated key"
        )
    for name, members in wanted.items():
        if statistics[name].count < 2:
            raise ValueError(
                f"reference set {name!r} has {statistics[name].count} readable images in {data!r}; "
                "Frechet statistics need at least 2"
            )
        unreadable = [f"{key}: {reason}" for key, reason in skipped if members is None or key in members]
        statistics[name].description = {
            "images": statistics[name].count,
            "skipped": len(unreadable),
            "skipped_examples": unreadable[:5],
            "duplicate_keys": duplicates,
            "not_found": 0 if members is None else len(members) - statistics[name].count,
        }
    return statistics


# ---------------------------------------------------------------- CLIP similarities


class ClipScorer(nn.Module):
    """CLIP-T and CLIP-I of the paper's Table 5 with a transformers CLIP model (default ViT-L/14).

    Both are ``100 * cosine`` of CLIP embeddings, per image and not clamped. CLIPScore (Hessel et al. 2021, which
    the paper cites) clamps each cosine at 0 and scales by 2.5; torchmetrics' ``CLIPScore``, the 100-scale of the
    paper's values (CLIP-T about 26), returns ``max(mean, 0)``: the mean of these values is the same whenever it is
    positive, as it is for real CLIP models. Images are preprocessed as :class:`ClipExtractor` documents; captions
    are truncated to the text model's length (77 tokens).
    """

    def __init__(self, model: str = DEFAULT_CLIP, device: str | torch.device | None = None):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel

        clip = load_pretrained(CLIPModel, model, "the CLIP model")
        self.tokenizer = load_pretrained(AutoTokenizer, model, "the CLIP tokenizer")
        self.images = ClipExtractor(model, device=device, clip_model=clip)
        self.max_tokens = int(clip.config.text_config.max_position_embeddings)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def describe(self) -> dict:
        """The model and conventions, for reports."""
        return {
            **self.images.describe(),
            "score": "100 * cosine, per image, not clamped",
            "text": f"captions truncated to {self.max_tokens} tokens",
        }

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings (N, D) of captions, truncated to the text model's length."""
        parts = []
        for start in range(0, len(texts), MAX_BATCH):
            tokens = self.tokenizer(
                list(texts[start : start + MAX_BATCH]),
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            ).to(self.device)
            parts.append(
                pooled(
                    self.images.model.get_text_features(
                        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                    )
                )
            )
        return torch.cat(parts).float()

    def text_image(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIP-T: 100 * cosine between each image (N, 3, H, W) in [0, 1] and its caption, (N,)."""
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images and {len(texts)} captions; give one caption per image")
        return 100 * F.cosine_similarity(self.images(images), self.text_embeddings(texts), dim=-1)

    def image_image(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """CLIP-I: 100 * cosine between each image and its reference image (both (N, 3, H, W) in [0, 1]), (N,)."""
        if len(references) != len(images):
            raise ValueError(f"got {len(images)} images and {len(references)} reference images; give one each")
        return 100 * F.cosine_similarity(self.images(images), self.images(references), dim=-1)
