"""A disk cache of the frozen encoders' outputs: VAE latent distributions and text embeddings.

The adapter is tiny; the frozen VAE encoder and text encoder(s) dominate the cost of a training step. The
cache runs them once per sample and training reads their outputs back. It is built as a resumable,
distributed pass over the dataset (:mod:`iqa_adapter.chunks`): shard ``shards/shard_NNNNNN.safetensors``
holds, for up to ``shard_size`` samples in dataset order,

* ``latent_parameters`` (n, 2C, h, w): the VAE's latent mean and log variance of the centre crop, from
  which training draws each sample's latent with its own generator (as the on-the-fly path does);
* ``prompt_embeds`` (n, L, D) and, for SDXL, ``pooled`` (n, P): the caption's text condition;
* ``crops`` (n, 4): original height and width and the crop's top-left corner (SDXL micro-conditioning);

and, in its metadata, the sample keys and the samples that could not be read (key, source, reason).
``cache.json`` records what the cache was made from (base model, data, resolution, dtype); a cache is
reused by any later run with the same base, data and resolution, whatever metrics it trains on (scores are
joined at training time), and a mismatching one is refused. Random crops and flips need fresh pixels every
epoch: they are only available without the cache.

Size per sample at 512 px: SD 1.5 about 16 KB of latents and 118 KB of text embeddings in float16; SDXL
at 1024 px about 64 KB and 315 KB.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..chunks import (
    ChunkBatches,
    ChunkCollector,
    ItemLoader,
    count_samples,
    my_unfinished_chunks,
    process_state,
    start_or_resume,
)
from ..datasets import Sample, decode_image, open_dataset
from ..images import to_rgb
from ..io_utils import atomic_write
from .base_model import FrozenBase, TextEmbeddings
from .data import CropInfo, ImageTransform

CACHE_FILE = "cache.json"
SHARDS_DIR = "shards"
RESIZE = "bilinear, longer side truncated"  # ImageTransform's; caches made by other resizes are not reused
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _shard_path(cache_dir: Path, index: int) -> Path:
    return cache_dir / SHARDS_DIR / f"shard_{index:06d}.safetensors"


def _read_crop(sample: Sample, transform: ImageTransform) -> tuple[torch.Tensor, CropInfo] | str:
    """The centre crop of a sample's image (loader worker), or why it cannot be read."""
    try:
        image = to_rgb(decode_image(sample.read()))
    except Exception as error:  # noqa: BLE001 - unreadable images are recorded, never fatal
        return f"cannot read image: {error}"
    return transform(image)


def build_cache(
    cache_dir: str | Path,
    data: str,
    base: FrozenBase,
    base_name: str,
    *,
    resolution: int,
    dtype: str = "float16",
    shard_size: int = 1000,
    batch_size: int = 16,
    num_workers: int = 2,
    progress: bool = True,
) -> None:
    """Encode every sample of ``data`` into ``cache_dir`` (resumes an unfinished cache; a finished one is kept)."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype!r}")
    cache_dir = Path(cache_dir)
    reader = open_dataset(data)
    state = process_state(base.device)
    parameters = {
        "base": base_name,
        "data": str(Path(data).expanduser().absolute()),
        "resolution": resolution,
        "crop": "center",
        "resize": RESIZE,
        "dtype": dtype,
        "shard_size": shard_size,
        "sdxl": base.is_sdxl,
        "vae_dtype": str(base.pipe.vae.dtype).removeprefix("torch."),
    }
    num_samples = start_or_resume(
        cache_dir / CACHE_FILE,
        parameters,
        functools.partial(count_samples, reader, data),
        state,
        partial_files=cache_dir / SHARDS_DIR,
    )
    _, mine = my_unfinished_chunks(num_samples, shard_size, functools.partial(_shard_path, cache_dir), state)
    transform = ImageTransform(resolution, "center")
    loader = DataLoader(
        ItemLoader(functools.partial(_read_crop, transform=transform)),
        batch_sampler=ChunkBatches(reader, mine, shard_size, batch_size),
        num_workers=num_workers,
        collate_fn=list,
    )
    collector = ChunkCollector(functools.partial(_write_shard, cache_dir, CACHE_DTYPES[dtype]))
    total = sum(min(shard_size, num_samples - index * shard_size) for index in mine)
    show = progress and state.is_main_process
    with tqdm(total=total, unit="img", desc="cache", disable=not show, dynamic_ncols=True) as bar:
        for pairs in loader:
            _encode_batch(base, pairs, collector)
            bar.update(len(pairs))
    state.wait_for_everyone()


def precompute_cache(
    base: str,
    data: str,
    cache_dir: str | Path,
    *,
    resolution: int,
    dtype: str = "float16",
    num_workers: int = 2,
    progress: bool = True,
) -> Path:
    """Build the cache of ``data`` for the base model ``base`` (a folder or hub id) before any training run, so that
    several runs (or runs started side by side) read one cache: the same cache ``train --cache-dir`` would build,
    with the base loaded as training loads it. Returns ``cache_dir``."""
    from .base_model import load_pipeline_for_training

    device = process_state().device  # this process's GPU under accelerate launch, else the GPU or the CPU
    frozen = FrozenBase(load_pipeline_for_training(base, device, torch.float32))
    build_cache(
        cache_dir, data, frozen, base, resolution=resolution, dtype=dtype, num_workers=num_workers, progress=progress
    )
    return Path(cache_dir)


def _encode_batch(base: FrozenBase, pairs: list, collector: ChunkCollector) -> None:
    readable = [(item, crop) for item, crop in pairs if not isinstance(crop, str)]
    encoded: dict[int, dict] = {}
    if readable:
        pixels = torch.stack([pixels for _, (pixels, _) in readable])
        parameters = base.encode_images(pixels).cpu()
        text = base.encode_text([item.sample.caption for item, _ in readable])
        for row, (item, (_, crop)) in enumerate(readable):
            encoded[id(item)] = {
                "latent_parameters": parameters[row],
                "prompt_embeds": text.prompt_embeds[row].cpu(),
                **({} if text.pooled is None else {"pooled": text.pooled[row].cpu()}),
                "crops": torch.tensor([*crop.original_size, *crop.crop_top_left]),
            }
    for item, crop in pairs:
        result = encoded.get(id(item)) or {"skipped": crop}
        collector.add(item, (item.sample.key, item.sample.source, result))


def _write_shard(cache_dir: Path, dtype: torch.dtype, chunk: int, rows: list) -> None:
    kept = [(key, result) for key, _, result in rows if "skipped" not in result]
    skipped = [[key, source, result["skipped"]] for key, source, result in rows if "skipped" in result]
    tensors = {}
    if kept:
        for name in kept[0][1]:
            stacked = torch.stack([result[name] for _, result in kept])
            tensors[name] = stacked if name == "crops" else stacked.to(dtype)
    metadata = {
        "format": "iqa_adapter.training_cache",
        "keys": json.dumps([key for key, _ in kept]),
        "skipped": json.dumps(skipped),
    }
    atomic_write(_shard_path(cache_dir, chunk), lambda temporary: save_file(tensors, temporary, metadata=metadata))


@dataclass(frozen=True)
class CacheEntry:
    shard: Path
    row: int


class TrainingCache:
    """Read access to a finished cache: entries by sample key, and the samples the cache could not read."""

    def __init__(self, cache_dir: str | Path, *, base_name: str, data: str, resolution: int):
        self.cache_dir = Path(cache_dir)
        job_file = self.cache_dir / CACHE_FILE
        if not job_file.is_file():
            raise FileNotFoundError(f"{self.cache_dir} holds no training cache ({CACHE_FILE} missing)")
        self.parameters = json.loads(job_file.read_text())
        expected = {"base": base_name, "data": str(Path(data).expanduser().absolute()), "resolution": resolution}
        changed = [
            f"{name}: cache has {self.parameters.get(name)!r}, this run {value!r}"
            for name, value in expected.items()
            if self.parameters.get(name) != value
        ]
        if changed:
            raise ValueError(
                f"the cache in {self.cache_dir} was made for another run ({'; '.join(changed)}); "
                "give another --cache-dir"
            )
        count = -(-int(self.parameters["num_samples"]) // int(self.parameters["shard_size"]))
        self.entries: dict[str, CacheEntry] = {}
        self.skipped: list[tuple[str, str, str]] = []
        for index in range(count):
            path = _shard_path(self.cache_dir, index)
            if not path.is_file():
                raise FileNotFoundError(
                    f"cache shard {path.name} is missing: the cache is unfinished; run training "
                    "with the same --cache-dir again to finish it"
                )
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
            for row, key in enumerate(json.loads(metadata["keys"])):
                self.entries.setdefault(key, CacheEntry(path, row))
            self.skipped += [tuple(entry) for entry in json.loads(metadata["skipped"])]

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)


@lru_cache(maxsize=8)
def _open_shard(path: str):
    return safe_open(path, framework="pt")


def read_cache_entry(entry: CacheEntry) -> dict[str, torch.Tensor]:
    """One sample's cached tensors (float32, except ``crops``)."""
    handle = _open_shard(str(entry.shard))
    values = {name: handle.get_slice(name)[entry.row] for name in handle.keys()}  # noqa: SIM118 (a safetensors handle)
    return {name: value if name == "crops" else value.float() for name, value in values.items()}


def cached_text(values: list[dict[str, torch.Tensor]]) -> TextEmbeddings:
    """The text condition of cached samples, batched."""
    prompt = torch.stack([value["prompt_embeds"] for value in values])
    pooled = torch.stack([value["pooled"] for value in values]) if "pooled" in values[0] else None
    return TextEmbeddings(prompt, pooled)


def cached_crops(values: list[dict[str, torch.Tensor]]) -> list[CropInfo]:
    return [
        CropInfo((int(v["crops"][0]), int(v["crops"][1])), (int(v["crops"][2]), int(v["crops"][3]))) for v in values
    ]


__all__ = ["TrainingCache", "build_cache", "cached_crops", "cached_text", "read_cache_entry"]
