"""Quality-conditioned generation through an unmodified diffusers pipeline call.

:func:`generate` runs every (prompt, quality target, seed) combination in batched pipeline calls. Each image
gets its own quality vector: the batch is laid out flat (one prompt entry per image, ``num_images_per_prompt
= 1``) and the per-image rows are handed to the UNet by the adapter (:meth:`IQAAdapter.per_image_embeds`),
because diffusers repeats ``ip_adapter_image_embeds`` for every image and would make each image attend to
every vector of the batch (diffusers issue 9813). Each image has its own CPU
generator seeded with its seed, so an image is the same whatever batch it was generated in, on any device.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .adapter import IQAAdapter
from .grid import image_grid
from .guidance import IQAGuidance
from .images import to_rgb
from .io_utils import atomic_write, write_json
from .reference import ReferenceEncoder
from .slots import AdapterSlots
from .stats import QualityTargetError
from .targets import QualityTarget
from .validation import check_int, check_number, check_scale, check_seed

Quality = Mapping[str, QualityTarget]
GENERATED_FILE = re.compile(r"\d{4,}\.(png|json)|sweep_.+\.png")
"""Names of the files :func:`save_images` and a sweep grid write."""


@dataclass
class GeneratedImage:
    """One generated image and every setting needed to reproduce it."""

    image: Image.Image
    settings: dict = field(default_factory=dict)


def sweep_qualities(fixed: Quality, metric: str, targets: Sequence[QualityTarget]) -> list[dict]:
    """Quality mappings that vary ``metric`` over ``targets`` and keep the other metrics ``fixed``."""
    return [{**fixed, metric: target} for target in targets]


def _size(image) -> tuple[int, int]:
    """(width, height) of a PIL image or of an H x W x C array (``output_type="np"``)."""
    shape = getattr(image, "shape", None)
    return (int(shape[1]), int(shape[0])) if shape is not None else image.size


def _versions() -> dict:
    import diffusers

    from . import __version__

    return {"iqa_adapter": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}


def generate(
    pipe,
    adapter: IQAAdapter | Sequence[IQAAdapter] | None,
    prompts: str | Sequence[str],
    qualities: Quality | Sequence[Quality] | None = None,
    *,
    negative_prompt: str | None = None,
    negative_quality: float | None = None,
    scale: float | Mapping | Sequence | None = None,
    seed: int = 0,
    num_images: int = 1,
    steps: int = 35,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
    iqa_guidance: IQAGuidance | None = None,
    references: Sequence[Image.Image] | None = None,
    negative_reference: Image.Image | None = None,
    reference_encoder: ReferenceEncoder | None = None,
    image_prompts: Sequence | None = None,
    seeds: Sequence[int] | None = None,
    progress: bool = True,
    **pipeline_kwargs,
) -> list[GeneratedImage]:
    """Generate ``num_images`` images (seeds ``seed``, ``seed + 1``, ...) for every prompt and quality target.

    With ``seeds`` (one per prompt), generate instead one image per (``prompts[i]``, ``seeds[i]``) pair and
    quality target, batched together: the evaluation's chunks hold such arbitrary pairs.

    The same seeds are used for every prompt and quality, so images that differ only in quality are paired
    (same initial noise), as the paper's sweeps and RelGain need. An adapter not attached to ``pipe`` is
    attached for this call and detached afterwards. ``scale`` (a float or a per-block dict) sets lambda for
    this call (an attached adapter gets its previous scale back afterwards); ``negative_quality=k`` puts
    ``-k * q`` in the unconditional branch (paper: k = 1). ``adapter=None`` generates with the base model alone
    (no ``qualities``). ``iqa_guidance`` adds IQA-gradient guidance (:class:`~iqa_adapter.guidance.IQAGuidance`,
    paper section 3.1).

    Several score adapters (``adapter=[topiq, laion]``) condition together, each in its own slot: a quality
    mapping names the metrics of all of them (a metric two adapters share gets the same target in both), and
    ``scale`` may give one value per adapter. IP-Adapters loaded into the pipeline with ``pipe.load_ip_adapter``
    take ``image_prompts`` (one image each, in the order they were loaded).

    A reference-based adapter takes ``references`` (images whose quality to transfer) instead of
    ``qualities``, and optionally a ``negative_reference`` for the unconditional branch (else the dropped
    condition); their features come from ``reference_encoder``, by default the one the adapter's config names.
    Extra keyword arguments go to the pipeline call unchanged (e.g. ``image`` and ``strength`` for img2img).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    adapters = [] if adapter is None else [adapter] if isinstance(adapter, IQAAdapter) else list(adapter)
    scales = per_adapter_scales(scale, len(adapters))
    check_settings(
        pipe,
        steps=steps,
        guidance=guidance,
        num_images=num_images,
        batch_size=batch_size,
        seed=seed,
        height=height,
        width=width,
        scale=None,
        negative_quality=negative_quality,
    )
    for value in scales:
        if value is not None:
            check_scale("scale", value)
    if seeds is not None:
        seeds = [check_seed("seeds[i]", value) for value in seeds]
        if len(seeds) != len(prompts) or num_images != 1:
            raise ValueError(
                f"seeds gives one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts "
                f"(and num_images must stay 1, got {num_images})"
            )
    if "image" in pipeline_kwargs:  # img2img: the init image is generated at the requested size
        pipeline_kwargs["image"] = fit_init_image(pipeline_kwargs["image"], pipe, width, height)
        height = width = None
        check_number("strength", pipeline_kwargs.get("strength", 0.8), 0.0, 1.0, open_minimum=True)
    by_reference = any(a.config.condition == "reference" for a in adapters)
    if by_reference and len(adapters) > 1:
        raise ValueError("a reference-based adapter conditions alone: pass it without other adapters")
    if not adapters:
        if qualities or references:
            raise ValueError("quality targets need an adapter; pass adapter=None only without qualities")
        qualities = [{}]
    elif by_reference:
        if qualities or not references:
            raise ValueError("this adapter is conditioned on reference images: pass references=[...], not qualities")
        qualities = [{} for _ in references]
    else:
        if references:
            raise ValueError("this adapter is conditioned on quality scores: pass qualities, not references")
        qualities = [qualities] if isinstance(qualities, Mapping) else list(qualities or [])
    if not prompts or not qualities or num_images < 1:
        raise ValueError("need at least one prompt, one quality target and num_images >= 1")
    if by_reference:
        encoder = reference_encoder or adapters[0].reference_encoder()
        rows = [[row] for row in encoder.encode(list(references)).cpu()]
        negative_row = None if negative_reference is None else encoder.encode([negative_reference]).cpu()[0]
        own_targets = [[{}] for _ in qualities]
    else:  # validated before any work
        own_targets = [_targets_by_adapter(adapters, quality) for quality in qualities]
        rows = [[a.z_scores(targets) for a, targets in zip(adapters, parts)] for parts in own_targets]
        for index, a in enumerate(adapters):
            _check_finite_features(a, pipe, [parts[index] for parts in own_targets], [r[index] for r in rows])
    if seeds is None:
        jobs = [
            (prompt, quality_index, seed + image_index)
            for prompt, quality_index, image_index in product(prompts, range(len(qualities)), range(num_images))
        ]
    else:
        jobs = [
            (prompt, quality_index, job_seed)
            for (prompt, job_seed), quality_index in product(zip(prompts, seeds), range(len(qualities)))
        ]
    for a in adapters:
        if a.is_attached and a.attached_unet is not pipe.unet:
            raise RuntimeError("the adapter is attached to another UNet than this pipeline's; detach it first")
    attached_here = [a for a in adapters if not a.is_attached]
    previous_scales = [a.scale for a in adapters]
    try:
        for a in attached_here:
            a.attach(pipe)
        for a, value in zip(adapters, scales):
            if value is not None:
                a.set_scale(value)
        do_cfg = guidance > 1.0
        external = _image_prompt_slots(pipe, adapters, image_prompts, do_cfg)
        scale_setting = [a.scale for a in adapters] if len(adapters) > 1 else adapters[0].scale if adapters else None
        results: list[GeneratedImage] = []
        bar = tqdm(total=len(jobs), desc="images", unit="img", disable=not progress, leave=False)
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            with ExitStack() as stack:
                call = dict(pipeline_kwargs)
                if adapters:
                    slot_embeds = [*external, *[None] * len(adapters)]  # in slot order, whatever the order given
                    for index, a in enumerate(adapters):
                        values = torch.stack([rows[quality_index][index] for _, quality_index, _ in chunk])
                        if by_reference:
                            negative = None if negative_row is None else negative_row.expand(len(chunk), -1)
                            embeds = a.reference_embeds(values, negative, do_classifier_free_guidance=do_cfg)
                        else:
                            embeds = a.embeds(
                                values, negative_quality=negative_quality, do_classifier_free_guidance=do_cfg
                            )
                        stack.enter_context(a.per_image_embeds(embeds))
                        slot_embeds[a.slot] = a.pipeline_placeholder(embeds, do_cfg)[0]
                    call["ip_adapter_image_embeds"] = slot_embeds
                if iqa_guidance is not None:
                    stack.enter_context(iqa_guidance.applied(pipe))
                if height is not None or width is not None:  # img2img pipelines take the size of their image
                    call.update(height=height, width=width)
                output = pipe(
                    prompt=[prompt for prompt, _, _ in chunk],
                    negative_prompt=None if negative_prompt is None else [negative_prompt] * len(chunk),
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=[torch.Generator("cpu").manual_seed(job_seed) for _, _, job_seed in chunk],
                    num_images_per_prompt=1,
                    **call,
                )
            for (prompt, quality_index, job_seed), image in zip(chunk, output.images):
                image_width, image_height = _size(image)
                z_scores = [
                    dict(zip(a.metric_names, row.tolist())) if not by_reference else {}
                    for a, row in zip(adapters, rows[quality_index])
                ]
                results.append(
                    GeneratedImage(
                        image=image,
                        settings={
                            "prompt": prompt,
                            "negative_prompt": negative_prompt,
                            "seed": job_seed,
                            "quality": {
                                name: str(target)
                                for a, targets in zip(adapters, own_targets[quality_index])
                                for name, target in a.complete_targets(targets).items()
                            },
                            "quality_z": z_scores[0] if len(adapters) == 1 else z_scores or {},
                            "reference_index": quality_index if by_reference else None,
                            "negative_reference": by_reference and negative_reference is not None,
                            "negative_quality": negative_quality,
                            "scale": scale_setting,
                            "iqa_guidance": iqa_guidance.describe() if iqa_guidance else None,
                            "steps": steps,
                            "guidance": guidance,
                            "height": image_height,
                            "width": image_width,
                            "base_model": getattr(pipe.config, "_name_or_path", None),
                            "adapter_base_model": adapters[0].config.base_model if adapters else None,
                            "pipeline": type(pipe).__name__,
                            "scheduler": type(pipe.scheduler).__name__,
                            "versions": _versions(),
                        },
                    )
                )
            bar.update(len(chunk))
        bar.close()
    finally:
        for a in reversed(attached_here):
            if a.is_attached:
                a.detach()
        for a, value, previous in zip(adapters, scales, previous_scales):
            if value is not None and a.is_attached:
                a.set_scale(previous)  # the scale was for this call only
    return results


def per_adapter_scales(scale, count: int) -> list:
    """One scale (or None: keep) per adapter from a float, a per-block dict, or a sequence of those."""
    if isinstance(scale, Sequence) and not isinstance(scale, str):
        if len(scale) != count:
            raise ValueError(
                f"scale gives {len(scale)} values for {count} adapters; give one per adapter, or one float for all"
            )
        return list(scale)
    return [scale] * count


def check_targets(adapters: Sequence[IQAAdapter], qualities: Sequence[Quality]) -> None:
    """Raise the error :func:`generate` would, before any model is loaded: every quality mapping split among
    ``adapters`` (an unknown metric names the ones they are conditioned on), each share a valid set of targets."""
    for quality in qualities:
        for adapter, targets in zip(adapters, _targets_by_adapter(adapters, quality)):
            adapter.z_scores(targets)


def _targets_by_adapter(adapters: Sequence[IQAAdapter], quality: Quality) -> list[dict]:
    """Each adapter's share of a quality mapping over the metrics of all ``adapters``."""
    if len(adapters) == 1:
        return [dict(quality)]
    known = {name for a in adapters for name in a.metric_names}
    unknown = sorted(set(quality) - known)
    if unknown:
        raise QualityTargetError(
            f"no adapter is conditioned on {', '.join(unknown)}; the adapters are conditioned "
            f"on: {', '.join(sorted(known))}"
        )
    return [{name: target for name, target in quality.items() if name in a.metric_names} for a in adapters]


def _image_prompt_slots(pipe, adapters: Sequence[IQAAdapter], images: Sequence | None, do_cfg: bool) -> list:
    """The ``ip_adapter_image_embeds`` of the IP-Adapters loaded with ``pipe.load_ip_adapter`` (the slots before
    the IQA-Adapters'), from ``image_prompts``; also refuses IQA-Adapters attached to the pipeline but not given."""
    slots = AdapterSlots.of(pipe.unet)
    if slots is None:
        if images:
            raise ValueError(
                "image_prompts are for IP-Adapters loaded with pipe.load_ip_adapter; this pipeline has none"
            )
        return []
    missing = [a for a in slots.adapters if not any(a is given for given in adapters)]
    if missing:
        names = "; ".join(", ".join(m.metric_names) for m in missing)
        raise ValueError(
            f"{len(missing)} more IQA-Adapter(s) are attached to this pipeline (on {names}): pass them "
            "too, or detach them"
        )
    return image_prompt_embeds(pipe, list(images or []), do_cfg)


def image_prompt_embeds(pipe, images: Sequence, do_classifier_free_guidance: bool = True) -> list[torch.Tensor]:
    """``ip_adapter_image_embeds`` entries for the IP-Adapters loaded with ``pipe.load_ip_adapter`` (one image
    each, in load order), as diffusers' ``prepare_ip_adapter_image_embeds`` makes them: that method refuses a
    pipeline whose UNet also hosts IQA-Adapters (it wants one image per slot)."""
    from diffusers.models.embeddings import ImageProjection

    layers = list(pipe.unet.encoder_hid_proj.image_projection_layers) if pipe.unet.encoder_hid_proj else []
    slots = AdapterSlots.of(pipe.unet)
    count = len(layers) if slots is None else slots.external
    if len(images) != count:
        raise ValueError(
            f"this pipeline has {count} IP-Adapter(s) loaded with pipe.load_ip_adapter: pass "
            f"image_prompts with one image each, got {len(images)}"
        )
    embeds = []
    for image, layer in zip(images, layers):
        positive, negative = pipe.encode_image(image, pipe._execution_device, 1, not isinstance(layer, ImageProjection))
        embeds.append(torch.cat([negative[None], positive[None]]) if do_classifier_free_guidance else positive[None])
    return embeds


def generated_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files an earlier run of :func:`save_images` (and a sweep grid) left in ``out_dir``."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(path for path in out_dir.iterdir() if GENERATED_FILE.fullmatch(path.name))


def check_output_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any work, that ``out_dir`` can take a run's images: it is not a file, and it holds no images of
    an earlier run unless ``overwrite`` (those are then replaced by :func:`save_images`, never mixed with)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} is a file; choose another --out")
    earlier = generated_files(out_dir)
    if earlier and not overwrite:
        raise ValueError(
            f"output folder {out_dir} already holds {len(earlier)} files of an earlier run "
            f"({earlier[0].name}, ...); choose another --out, or pass --overwrite (overwrite=True) "
            "to replace them"
        )
    return out_dir


def save_images(
    results: Sequence[GeneratedImage], out_dir: str | os.PathLike, extra: Mapping | None = None, overwrite: bool = False
) -> list[Path]:
    """Write ``NNNN.png`` and a ``NNNN.json`` sidecar of its settings (plus ``extra``) per image.

    A folder holding the images of an earlier run is refused, or with ``overwrite`` emptied of them first, so
    that a folder never mixes two runs.
    """
    out_dir = check_output_folder(out_dir, overwrite)
    for path in generated_files(out_dir):
        path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, result in enumerate(results):
        path = out_dir / f"{index:04d}.png"
        atomic_write(path, lambda temporary, image=result.image: image.save(temporary, format="PNG"))
        write_json(path.with_suffix(".json"), {**result.settings, **(extra or {}), "file": path.name})
        paths.append(path)
    return paths


def default_size(pipe) -> tuple[int, int]:
    """(width, height) the pipeline generates by default: the UNet's sample size times the VAE's scale factor."""
    side = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    return side, side


def fit_init_image(image, pipe, width: int | None = None, height: int | None = None):
    """An img2img init image at the size to generate: ``width`` x ``height``, each defaulting to the base model's
    (:func:`default_size`). PIL images are resized (bicubic); other inputs (tensors, arrays) pass unchanged."""
    if not isinstance(image, Image.Image):
        return image
    default_width, default_height = default_size(pipe)
    size = (width or default_width, height or default_height)
    image = to_rgb(image)
    return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)


def check_settings(
    pipe,
    *,
    steps: int,
    guidance: float,
    num_images: int,
    batch_size: int,
    seed: int,
    height: int | None,
    width: int | None,
    scale,
    negative_quality: float | None,
) -> None:
    """Validate the numeric settings of :func:`generate`; each error names the setting and its valid range."""
    check_int("steps", steps, 1)
    check_number("guidance", guidance, 0.0)
    check_int("num_images", num_images, 1)
    check_int("batch_size", batch_size, 1)
    check_seed("seed", seed)
    if scale is not None:
        check_scale("scale", scale)
    if negative_quality is not None:
        check_number("negative_quality", negative_quality, 0.0)
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    for name, value in (("height", height), ("width", width)):
        if value is not None and (check_int(name, value, factor) % factor):
            raise ValueError(f"{name} must be a multiple of {factor} (the VAE's scale factor), got {value}")


def _check_finite_features(adapter: IQAAdapter, pipe, qualities: Sequence[Quality], rows: list[torch.Tensor]) -> None:
    """Refuse targets so far out that the adapter's projection overflows in the UNet's precision (black images)."""
    dtype = pipe.unet.dtype
    projection = copy.deepcopy(adapter.projection).to(dtype=dtype)  # the precision it will run in, on a copy
    with torch.no_grad():
        features = projection(adapter.condition_inputs(torch.stack(rows)).to(projection.norm.weight))
    for quality, finite in zip(qualities, torch.isfinite(features).flatten(1).all(dim=1).tolist()):
        if not finite:
            raise ValueError(
                f"quality targets {dict(quality)} are so far outside the training scores that the "
                f"adapter's features overflow in {str(dtype).removeprefix('torch.')}; choose targets "
                "within the adapter's range (`iqa-adapter info --adapter DIR` shows it)"
            )


def sweep_grid(results: Sequence[GeneratedImage], metric: str) -> Image.Image:
    """A labelled grid of a sweep over ``metric``: one row per (prompt, seed), one column per target."""
    rows: dict[tuple[str, int], list[GeneratedImage]] = {}
    for result in results:
        rows.setdefault((result.settings["prompt"], result.settings["seed"]), []).append(result)
    first_row = next(iter(rows.values()))
    return image_grid(
        [result.image for row in rows.values() for result in row],
        columns=len(first_row),
        row_labels=[f"{prompt[:40]} | seed {seed}" for prompt, seed in rows],
        column_labels=[f"{metric}={result.settings['quality'][metric]}" for result in first_row],
    )
