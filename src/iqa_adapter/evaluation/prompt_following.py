"""Prompt following on GenEval's six tasks (paper Table 1), with transformers models only.

GenEval (Ghosh et al. 2023, github djghosh13/geneval, ``evaluation/evaluate_images.py`` and
``summary_scores.py``) judges each image against its prompt's metadata (``tag``, ``include``, ``exclude``):
single object, two objects, counting, colours, position and colour attribution. This module applies the same
rules to the detections of an open-vocabulary detector (OWLv2 by default) and classifies colours with CLIP:

* detections: a box counts for a class when its score is above ``threshold`` (0.3), or ``counting_threshold``
  (0.9) for ``counting`` prompts; per class, the ``max_objects`` (16) most confident are kept, then greedy
  non-maximum suppression drops boxes overlapping a kept one by IoU >= ``max_overlap`` (IoU with GenEval's
  +1 pixel convention);
* ``include`` (all must hold): at least ``count`` objects of the class; with ``color``, at least ``count`` of the
  ``count`` most confident ones classified as that colour; with ``position`` [relation, group], every one of
  those objects stands in that relation to every object matched by the earlier clause ``group``;
* ``exclude`` (any fails the image): ``count`` or more objects of the class (counting: no more than asked);
* position: the offset between box centres, each coordinate shrunk towards 0 by ``position_threshold`` (0.1)
  times the two boxes' summed size, divided by the offset's length; ``left of`` / ``right of`` / ``above`` /
  ``below`` when the x / y component is below -0.5 or above 0.5 (image y grows downwards);
* colour: CLIP zero-shot among GenEval's ten colours, each colour's text embedding the mean of three templates
  ("a photo of a {colour} {object}", "a photo of a {colour}-colored {object}", "a photo of a {colour} object");
* summary: accuracy per task, and the overall score as the mean of the task accuracies.

**The numbers will not equal GenEval's published ones.** GenEval detects with Mask2Former (Swin-S, COCO
classes, through mmdet) and classifies the colour of each object's segmentation mask pasted on grey; here an
open-vocabulary detector (queried with "a photo of a {class}" for GenEval's 80 class names, each box taking its
best-scoring class) gives boxes only, so colours are classified on the box crop, background included. OWLv2
returns several overlapping boxes for one object, so non-maximum suppression is on by default
(``max_overlap`` 0.5; GenEval's default 1.0 turns it off, Mask2Former's output being already de-duplicated), and
its confidences are distributed differently from Mask2Former's (the 0.9 counting threshold in particular). Use it
to compare a base model and its adapter side by side, under the same settings, not against published tables.

The rules (:func:`select_objects`, :func:`relative_position`, :func:`judge`) are pure functions of
:class:`Detection` lists; :class:`GenEvalScorer` runs the models and applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..hub import error_first_line, loading_options, not_found_message
from ..images import to_pil_images, to_rgb
from ..validation import check_int, check_number

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
COLOR_TEMPLATES = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)
DETECTION_TEMPLATE = "a photo of a {}"
GENEVAL_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "computer mouse",
    "tv remote",
    "computer keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
"""The 80 COCO classes as GenEval's ``object_names.txt`` spells them (the names its metadata uses)."""

Box = tuple[float, float, float, float]


class ModelLoadError(ValueError):
    """A detector or CLIP model that cannot be loaded; the message says why and what to give instead."""


@dataclass(frozen=True)
class Detection:
    """One detected object: class name, box (x1, y1, x2, y2) in pixels, confidence, and its colour once classified."""

    label: str
    box: Box
    score: float
    color: str | None = None


@dataclass(frozen=True)
class GenEvalRules:
    """GenEval's settings (its ``--options``), except ``max_overlap``: GenEval's 1.0 turns NMS off."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 0.5
    position_threshold: float = 0.1

    def __post_init__(self) -> None:
        check_number("threshold", self.threshold, 0.0, 1.0)
        check_number("counting_threshold", self.counting_threshold, 0.0, 1.0)
        check_int("max_objects", self.max_objects, 1)
        check_number("max_overlap", self.max_overlap, 0.0, 1.0, open_minimum=True)
        check_number("position_threshold", self.position_threshold, 0.0)

    def score_threshold(self, tag: str) -> float:
        """The confidence a detection needs for a prompt of this task."""
        return self.counting_threshold if tag == "counting" else self.threshold


# ---- rules: pure functions of detections -----------------------------------------------------------------------------


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes, areas counted in whole pixels (+1), as GenEval."""

    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3]))
    union = area(*box_a[:4]) + area(*box_b[:4]) - inter
    return inter / union if union else 0.0


def select_objects(
    detections: Sequence[Detection], tag: str, rules: GenEvalRules = GenEvalRules()
) -> dict[str, list[Detection]]:
    """The detections that count, per class, most confident first: above the task's threshold, the
    ``max_objects`` best, then greedy NMS (none when ``max_overlap`` is 1)."""
    threshold = rules.score_threshold(tag)
    by_class: dict[str, list[Detection]] = {}
    for detection in detections:
        if detection.score > threshold:
            by_class.setdefault(detection.label, []).append(detection)
    selected = {}
    for label, candidates in by_class.items():
        remaining = sorted(candidates, key=lambda detection: -detection.score)[: rules.max_objects]
        kept = []
        while remaining:
            best = remaining.pop(0)
            kept.append(best)
            if rules.max_overlap < 1:
                remaining = [other for other in remaining if box_iou(best.box, other.box) < rules.max_overlap]
        selected[label] = kept
    return selected


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1) -> set[str]:
    """Where box A lies relative to box B: a subset of :data:`RELATIONS` (empty when they overlap too much)."""
    a, b = np.asarray(box_a[:4], dtype=np.float64), np.asarray(box_b[:4], dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    size = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    shrunk = np.maximum(np.abs(offset) - threshold * size, 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {relation for relation, holds in relations.items() if holds}


def color_requests(objects: Mapping[str, Sequence[Detection]], metadata: Mapping) -> dict[str, int]:
    """How many of each class's most confident objects need a colour to judge ``metadata`` (class -> number)."""
    requests: dict[str, int] = {}
    for clause in metadata.get("include", []):
        found = len(objects.get(clause["class"], []))
        if "color" in clause and found >= clause["count"]:
            requests[clause["class"]] = max(requests.get(clause["class"], 0), clause["count"])
    return requests


def judge(
    objects: Mapping[str, Sequence[Detection]], metadata: Mapping, position_threshold: float = 0.1
) -> tuple[bool, str]:
    """Whether the selected objects satisfy GenEval's metadata, and why not (one reason per line).

    Objects that a colour clause looks at must carry their colour (see :func:`color_requests`).
    """
    reasons = []
    groups: list[Sequence[Detection] | None] = []  # the objects each include clause matched, None if it failed
    for clause in metadata.get("include", []):
        label, count = clause["class"], clause["count"]
        found = list(objects.get(label, []))[:count]
        failure = None
        if len(found) < count:
            failure = f"expected {label}>={count}, found {len(found)}"
        elif "color" in clause:
            colors = [detection.color for detection in found]
            if None in colors:
                raise ValueError(f"the {label} objects have no colour; classify those color_requests names first")
            if colors.count(clause["color"]) < count:
                seen = ", ".join(f"{colors.count(color)} {color}" for color in COLORS if color in colors)
                failure = f"expected {clause['color']} {label}>={count}, found {seen}"
        if failure is None and "position" in clause:
            relation, group = clause["position"]
            targets = groups[group]
            if targets is None:
                failure = f"no target for {label} to be {relation}"
            else:
                failure = _position_failure(found, targets, label, relation, position_threshold)
        if failure is not None:
            reasons.append(failure)
        groups.append(None if failure is not None else found)
    for clause in metadata.get("exclude", []):
        found = len(objects.get(clause["class"], []))
        if found >= clause["count"]:
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {found}")
    return not reasons, "\n".join(reasons)


def _position_failure(
    objects: Sequence[Detection], targets: Sequence[Detection], label: str, relation: str, threshold: float
) -> str | None:
    """Why not every object stands in ``relation`` to every target (None when all do)."""
    for obj in objects:
        for target in targets:
            actual = relative_position(obj.box, target.box, threshold)
            if relation not in actual:
                found = " and ".join(sorted(actual)) or "no clear relation to"
                return f"expected {label} {relation} target, found {found} target"
    return None


def check_metadata(metadata: Sequence[Mapping], classnames: Sequence[str] = GENEVAL_CLASSES) -> None:
    """Raise ValueError naming the first record that GenEval's rules cannot judge (unknown class, colour, ...)."""
    known = set(classnames)
    for index, record in enumerate(metadata):
        where = f"GenEval metadata {index}"
        if not isinstance(record, Mapping) or "tag" not in record or not isinstance(record.get("include"), list):
            raise ValueError(
                f"{where} needs a tag and an include list, got {record!r}; pass the records of GenEval's "
                "evaluation_metadata.jsonl"
            )
        clauses = [("include", position, clause) for position, clause in enumerate(record["include"])]
        clauses += [("exclude", position, clause) for position, clause in enumerate(record.get("exclude", []))]
        for kind, position, clause in clauses:
            if not isinstance(clause, Mapping) or "class" not in clause or "count" not in clause:
                raise ValueError(f"{where} {kind}[{position}] needs class and count, got {clause!r}")
            if clause["class"] not in known:
                raise ValueError(
                    f"{where} {kind}[{position}] names the class {clause['class']!r}, which the detector "
                    "is not asked for; add it to classnames"
                )
            check_int(f"{where} {kind}[{position}] count", clause["count"], 1)
            if "color" in clause and clause["color"] not in COLORS:
                raise ValueError(
                    f"{where} {kind}[{position}] asks for the colour {clause['color']!r}; GenEval's "
                    f"colours are {', '.join(COLORS)}"
                )
            if "position" in clause:
                relation, group = clause["position"]
                if relation not in RELATIONS or not isinstance(group, int) or not 0 <= group < position:
                    raise ValueError(
                        f"{where} {kind}[{position}] position {clause['position']!r} must be "
                        f"[relation, earlier clause index] with a relation among {', '.join(RELATIONS)}"
                    )


def summarize(results: Sequence[Mapping]) -> dict:
    """GenEval's summary: accuracy per task, the overall score (mean over tasks) and counts.

    ``correct_prompts`` is the share of prompts with at least one correct image (None, as ``prompts``, when the
    results do not name their prompts).
    """
    if not results:
        raise ValueError("no GenEval results to summarize; score some images first")
    tags = list(dict.fromkeys(result["tag"] for result in results))
    tags = [tag for tag in TASKS if tag in tags] + [tag for tag in tags if tag not in TASKS]
    tasks = {}
    for tag in tags:
        correct = [bool(result["correct"]) for result in results if result["tag"] == tag]
        tasks[tag] = {"accuracy": float(np.mean(correct)), "correct": int(sum(correct)), "images": len(correct)}
    prompts: dict[tuple, bool] = {}
    if all(result.get("prompt") is not None for result in results):
        for result in results:
            key = (result["tag"], result["prompt"])
            prompts[key] = prompts.get(key, False) or bool(result["correct"])
    return {
        "overall": float(np.mean([task["accuracy"] for task in tasks.values()])),
        "tasks": tasks,
        "images": len(results),
        "correct_images": float(np.mean([bool(result["correct"]) for result in results])),
        "prompts": len(prompts) if prompts else None,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else None,
    }


# ---- models ----------------------------------------------------------------------------------------------------------


def _load(source: str, what: str, load: Callable[..., object]) -> object:
    """``load(source, **options)`` with hub ids read from the cache while offline; failures as ModelLoadError."""
    options = loading_options(source)
    try:
        return load(source, **options)
    except (OSError, ValueError) as error:
        if options.get("local_files_only"):
            raise ModelLoadError(not_found_message(source, what)) from None
        raise ModelLoadError(
            f"cannot load {what} {source!r} ({error_first_line(error)}); give a local model folder or a hub id of that kind"
        ) from None


def _pooled(output) -> torch.Tensor:
    """Projected features from ``get_text_features``/``get_image_features`` (a tensor before transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalized(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def as_pil_images(images: Sequence[Image.Image | torch.Tensor] | torch.Tensor) -> list[Image.Image]:
    """8-bit RGB images from PIL images, float tensors (3, H, W) or one tensor (N, 3, H, W), values in [0, 1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be a tensor (N, 3, H, W), got shape {tuple(images.shape)}")
        return [_tensor_image(image) for image in images]
    return [_tensor_image(image) if isinstance(image, torch.Tensor) else to_rgb(image) for image in images]


def _tensor_image(image: torch.Tensor) -> Image.Image:
    """An 8-bit RGB image from a float tensor (3, H, W) in [0, 1]."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"an image tensor must be (3, H, W), got shape {tuple(image.shape)}")
    if image.numel() and (image.min() < 0 or image.max() > 1):
        raise ValueError(
            f"image values must lie in [0, 1], got [{image.min():.3g}, {image.max():.3g}]; "
            "map [-1, 1] images with (x + 1) / 2"
        )
    return to_pil_images(image[None])[0]


class GenEvalScorer:
    """GenEval's judgement of generated images with an OWLv2 detector and a CLIP colour classifier.

    ``detector``, ``clip``: hub ids or local folders (model and processor). ``classnames``: the detector's
    vocabulary (GenEval's 80 COCO names). ``batch_size``: images per detector batch and crops per CLIP batch.
    """

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        clip: str = DEFAULT_CLIP,
        device: str | torch.device = "cpu",
        *,
        rules: GenEvalRules = GenEvalRules(),
        classnames: Sequence[str] = GENEVAL_CLASSES,
        batch_size: int = 8,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoProcessor, CLIPModel, Owlv2ForObjectDetection

        self.sources = {"detector": str(detector), "clip": str(clip)}
        self.rules = rules
        self.classnames = tuple(classnames)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.device, self.dtype = torch.device(device), dtype
        self.detector_processor = _load(detector, "the OWLv2 detector's processor", AutoProcessor.from_pretrained)
        self.detector = _load(detector, "the OWLv2 detector", Owlv2ForObjectDetection.from_pretrained)
        self.clip_processor = _load(clip, "the CLIP processor", AutoProcessor.from_pretrained)
        self.clip = _load(clip, "the CLIP model", CLIPModel.from_pretrained)
        self.detector.to(self.device, dtype).eval()
        self.clip.to(self.device, dtype).eval()
        self._color_classifiers: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            tokens = self.detector_processor.tokenizer(
                [DETECTION_TEMPLATE.format(name) for name in self.classnames],
                padding=True,
                truncation=True,
                return_tensors="pt",
            )
            self._queries = _pooled(self.detector.owlv2.get_text_features(**tokens.to(self.device)))

    def describe(self) -> dict:
        """What decides the verdicts (models, rules, vocabulary), as JSON-ready values, for reports and caches."""
        return {
            **self.sources,
            "rules": asdict(self.rules),
            "classnames": list(self.classnames),
            "detection_template": DETECTION_TEMPLATE,
            "color_templates": list(COLOR_TEMPLATES),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Every box above the lower of the two score thresholds, with its best class, per image."""
        floor = min(self.rules.threshold, self.rules.counting_threshold)
        detections = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            pixels = self.detector_processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            feature_map, _ = self.detector.image_embedder(pixels.to(self.device, self.dtype))
            features = feature_map.reshape(feature_map.shape[0], -1, feature_map.shape[-1])
            queries = self._queries.unsqueeze(0).expand(len(batch), -1, -1)
            logits, _ = self.detector.class_predictor(features, queries)
            boxes = self.detector.box_predictor(features, feature_map).float().cpu()
            scores, labels = torch.sigmoid(logits.float()).max(dim=-1)
            for image, image_scores, image_labels, image_boxes in zip(batch, scores.cpu(), labels.cpu(), boxes):
                detections.append(self._image_detections(image, image_scores, image_labels, image_boxes, floor))
        return detections

    def _image_detections(
        self, image: Image.Image, scores: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, floor: float
    ) -> list[Detection]:
        """Boxes (centre, size) relative to the square the processor padded the image to, in pixels of the image."""
        width, height = image.size
        side = max(width, height)
        keep = (scores > floor).nonzero().flatten().tolist()
        detections = []
        for index in keep:
            cx, cy, w, h = (boxes[index] * side).tolist()
            box = (
                min(max(cx - w / 2, 0), width),
                min(max(cy - h / 2, 0), height),
                min(max(cx + w / 2, 0), width),
                min(max(cy + h / 2, 0), height),
            )
            detections.append(Detection(self.classnames[int(labels[index])], box, float(scores[index])))
        return detections

    def _color_classifier(self, classname: str) -> torch.Tensor:
        """Unit text embeddings (colours, D) of GenEval's colour templates for ``classname``, averaged per colour."""
        if classname not in self._color_classifiers:
            texts = [template.format(color=color, object=classname) for color in COLORS for template in COLOR_TEMPLATES]
            tokens = self.clip_processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            embeddings = _normalized(_pooled(self.clip.get_text_features(**tokens.to(self.device))).float())
            mean = embeddings.reshape(len(COLORS), len(COLOR_TEMPLATES), -1).mean(dim=1)
            self._color_classifiers[classname] = _normalized(mean)
        return self._color_classifiers[classname]

    @torch.no_grad()
    def classify_colors(self, image: Image.Image, detections: Sequence[Detection]) -> list[str]:
        """GenEval's colour of each detection, by CLIP zero-shot classification of its box crop."""
        colors = []
        for start in range(0, len(detections), self.batch_size):
            batch = detections[start : start + self.batch_size]
            crops = [image.crop(_crop_box(detection.box)) for detection in batch]
            pixels = self.clip_processor.image_processor(images=crops, return_tensors="pt")["pixel_values"]
            output = self.clip.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
            features = _normalized(_pooled(output).float())
            for detection, row in zip(batch, features):
                colors.append(COLORS[int((self._color_classifier(detection.label) @ row).argmax())])
        return colors

    def score(
        self, images: Sequence[Image.Image | torch.Tensor] | torch.Tensor, metadata: Sequence[Mapping]
    ) -> list[dict]:
        """GenEval's verdict per image: ``tag``, ``prompt``, ``correct``, ``reason`` and the counted ``detections``
        (class -> [[x1, y1, x2, y2, score], ...])."""
        images = as_pil_images(images)
        if len(images) != len(metadata):
            raise ValueError(
                f"got {len(images)} images but {len(metadata)} metadata records; give one record per image"
            )
        check_metadata(metadata, self.classnames)
        results = []
        for image, record, detections in zip(images, metadata, self.detect(images)):
            objects = select_objects(detections, record["tag"], self.rules)
            for label, count in color_requests(objects, record).items():
                colors = self.classify_colors(image, objects[label][:count])
                objects[label][:count] = [replace(obj, color=color) for obj, color in zip(objects[label], colors)]
            correct, reason = judge(objects, record, self.rules.position_threshold)
            results.append(
                {
                    "tag": record["tag"],
                    "prompt": record.get("prompt"),
                    "correct": correct,
                    "reason": reason,
                    "detections": {label: [[*obj.box, obj.score] for obj in found] for label, found in objects.items()},
                }
            )
        return results


def _crop_box(box: Box) -> tuple[int, int, int, int]:
    """A whole-pixel crop of a box, at least one pixel wide and high."""
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    return x1, y1, max(int(np.ceil(box[2])), x1 + 1), max(int(np.ceil(box[3])), y1 + 1)
