"""GenEval's rules on hand-made detections, and GenEvalScorer end to end with tiny random OWLv2 and CLIP models."""

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from iqa_adapter.evaluation.prompt_following import (
    COLORS,
    Detection,
    GenEvalRules,
    GenEvalScorer,
    ModelLoadError,
    as_pil_images,
    box_iou,
    check_metadata,
    color_requests,
    judge,
    relative_position,
    select_objects,
    summarize,
)

SINGLE = {"tag": "single_object", "prompt": "a photo of a bench", "include": [{"class": "bench", "count": 1}]}
TWO = {
    "tag": "two_object",
    "prompt": "a photo of a bench and a sports ball",
    "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}],
}
COUNTING = {
    "tag": "counting",
    "prompt": "a photo of two clocks",
    "include": [{"class": "clock", "count": 2}],
    "exclude": [{"class": "clock", "count": 3}],
}
COLOR = {
    "tag": "colors",
    "prompt": "a photo of a blue fire hydrant",
    "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
}
POSITION = {
    "tag": "position",
    "prompt": "a photo of a dog right of a teddy bear",
    "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
}
COLOR_ATTR = {
    "tag": "color_attr",
    "prompt": "a photo of a purple wine glass and a black apple",
    "include": [
        {"class": "wine glass", "count": 1, "color": "purple"},
        {"class": "apple", "count": 1, "color": "black"},
    ],
}


def det(label, box, score=0.95, color=None):
    return Detection(label, tuple(float(v) for v in box), score, color)


def verdict(detections, metadata, rules=None):
    """GenEval's verdict for hand-made detections (colours, when needed, set on the detections)."""
    rules = rules or GenEvalRules()
    return judge(select_objects(detections, metadata["tag"], rules), metadata, rules.position_threshold)


# ---- detections that count -------------------------------------------------------------------------------------------


def test_box_iou_counts_whole_pixels():
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0
    # 10x10 boxes sharing a 5x10 strip: 50 / 150
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


def test_threshold_is_strict_and_tag_dependent():
    detections = [
        det("clock", (0, 0, 10, 10), 0.3),
        det("clock", (50, 0, 60, 10), 0.31),
        det("clock", (100, 0, 110, 10), 0.91),
    ]
    assert [d.score for d in select_objects(detections, "single_object")["clock"]] == [0.91, 0.31]
    assert [d.score for d in select_objects(detections, "counting")["clock"]] == [0.91]
    assert select_objects([det("clock", (0, 0, 1, 1), 0.2)], "single_object") == {}


def test_most_confident_first_and_at_most_max_objects():
    detections = [det("cup", (i * 20, 0, i * 20 + 10, 10), 0.4 + i / 100) for i in range(20)]
    cups = select_objects(detections, "single_object")["cup"]
    assert len(cups) == 16
    assert [d.score for d in cups] == sorted((d.score for d in detections), reverse=True)[:16]


def test_nms_merges_duplicates_unless_turned_off():
    duplicates = [
        det("dog", (0, 0, 100, 100), 0.9),
        det("dog", (2, 2, 101, 99), 0.8),
        det("dog", (200, 0, 300, 100), 0.7),
    ]
    assert [d.score for d in select_objects(duplicates, "single_object")["dog"]] == [0.9, 0.7]
    geneval_default = GenEvalRules(max_overlap=1.0)  # GenEval's own setting: no NMS
    assert len(select_objects(duplicates, "single_object", geneval_default)["dog"]) == 3


def test_rules_are_validated():
    with pytest.raises(ValueError, match="max_overlap must be a number > 0 and <= 1, got 0"):
        GenEvalRules(max_overlap=0.0)
    with pytest.raises(ValueError, match="threshold must be a number >= 0 and <= 1, got 1.5"):
        GenEvalRules(threshold=1.5)


# ---- the six tasks ---------------------------------------------------------------------------------------------------


def test_single_object():
    assert verdict([det("bench", (0, 0, 50, 50))], SINGLE) == (True, "")
    assert verdict([det("bench", (0, 0, 50, 50), 0.2)], SINGLE) == (False, "expected bench>=1, found 0")
    assert verdict([det("chair", (0, 0, 50, 50))], SINGLE)[0] is False


def test_two_objects_need_both():
    assert verdict([det("bench", (0, 0, 50, 50)), det("sports ball", (60, 0, 70, 10))], TWO)[0] is True
    correct, reason = verdict([det("bench", (0, 0, 50, 50))], TWO)
    assert not correct and reason == "expected sports ball>=1, found 0"


def clocks(n, score=0.95):
    return [det("clock", (i * 100, 0, i * 100 + 50, 50), score) for i in range(n)]


def test_counting_exact():
    assert verdict(clocks(2), COUNTING) == (True, "")
    assert verdict(clocks(1), COUNTING) == (False, "expected clock>=2, found 1")
    assert verdict(clocks(3), COUNTING) == (False, "expected clock<3, found 3")


def test_counting_duplicates_merged_by_nms():
    duplicated = clocks(2) + [det("clock", (1, 1, 51, 49), 0.93)]
    assert verdict(duplicated, COUNTING)[0] is True
    assert verdict(duplicated, COUNTING, GenEvalRules(max_overlap=1.0)) == (False, "expected clock<3, found 3")


def test_counting_uses_its_own_threshold():
    uncertain = clocks(2) + [det("clock", (300, 0, 350, 50), 0.6)]  # counts for other tasks, not for counting
    assert verdict(uncertain, COUNTING)[0] is True
    assert verdict(clocks(2, score=0.6), COUNTING) == (False, "expected clock>=2, found 0")
    assert verdict(clocks(2, score=0.6), COUNTING, GenEvalRules(counting_threshold=0.3))[0] is True


def test_relative_position_with_threshold():
    centre = (100, 100, 140, 140)
    assert relative_position((0, 100, 40, 140), centre) == {"left of"}
    assert relative_position((200, 100, 240, 140), centre) == {"right of"}
    assert relative_position((100, 0, 140, 40), centre) == {"above"}  # image y grows downwards
    assert relative_position((100, 200, 140, 240), centre) == {"below"}
    assert relative_position((200, 200, 240, 240), centre) == {"right of", "below"}  # diagonal: both
    assert relative_position(centre, centre) == set()
    # centres 8 px apart, boxes 40 px wide: 8 < 0.1 * (40 + 40), so no relation; with threshold 0 it is "right of"
    assert relative_position((108, 100, 148, 140), centre) == set()
    assert relative_position((108, 100, 148, 140), centre, threshold=0.0) == {"right of"}


def test_position_task():
    bear, dog_right, dog_left = (0, 0, 50, 50), (200, 0, 250, 50), (-200, 0, -150, 50)
    assert verdict([det("teddy bear", bear), det("dog", dog_right)], POSITION) == (True, "")
    correct, reason = verdict([det("teddy bear", bear), det("dog", dog_left)], POSITION)
    assert not correct and reason == "expected dog right of target, found left of target"
    correct, reason = verdict([det("dog", dog_right)], POSITION)
    assert not correct
    assert reason.splitlines() == ["expected teddy bear>=1, found 0", "no target for dog to be right of"]


def test_position_only_the_most_confident_objects_are_compared():
    detections = [
        det("teddy bear", (0, 0, 50, 50)),
        det("dog", (200, 0, 250, 50), 0.9),
        det("dog", (-300, 0, -250, 50), 0.5),
    ]
    assert verdict(detections, POSITION)[0] is True
    detections[2] = det("dog", (-300, 0, -250, 50), 0.95)
    assert verdict(detections, POSITION)[0] is False


def test_colors():
    hydrant = det("fire hydrant", (0, 0, 50, 80))
    objects = select_objects([hydrant], "colors")
    assert color_requests(objects, COLOR) == {"fire hydrant": 1}
    assert judge({"fire hydrant": [replace(hydrant, color="blue")]}, COLOR) == (True, "")
    correct, reason = judge({"fire hydrant": [det("fire hydrant", (0, 0, 50, 80), color="red")]}, COLOR)
    assert not correct and reason == "expected blue fire hydrant>=1, found 1 red"
    assert color_requests({}, COLOR) == {}  # nothing to classify when the object is missing
    with pytest.raises(ValueError, match="the fire hydrant objects have no colour"):
        judge(objects, COLOR)


def test_colors_with_counts_look_at_the_most_confident_only():
    metadata = {"tag": "colors", "include": [{"class": "car", "count": 2, "color": "red"}]}
    cars = [
        det("car", (0, 0, 10, 10), 0.9, "red"),
        det("car", (20, 0, 30, 10), 0.8, "red"),
        det("car", (40, 0, 50, 10), 0.7, "green"),
    ]
    objects = select_objects(cars, "colors")
    assert color_requests(objects, metadata) == {"car": 2}
    assert judge(objects, metadata) == (True, "")
    cars[1] = det("car", (20, 0, 30, 10), 0.6, "red")  # now the green car is among the two most confident
    assert judge(select_objects(cars, "colors"), metadata) == (False, "expected red car>=2, found 1 red, 1 green")


def test_color_attribution_pairs_colours_with_objects():
    right = [det("wine glass", (0, 0, 20, 40), color="purple"), det("apple", (50, 0, 70, 20), color="black")]
    swapped = [det("wine glass", (0, 0, 20, 40), color="black"), det("apple", (50, 0, 70, 20), color="purple")]
    assert verdict(right, COLOR_ATTR) == (True, "")
    correct, reason = verdict(swapped, COLOR_ATTR)
    assert not correct
    assert reason.splitlines() == [
        "expected purple wine glass>=1, found 1 black",
        "expected black apple>=1, found 1 purple",
    ]


def test_exclude_fails_on_any_clause():
    metadata = {
        "tag": "single_object",
        "include": [{"class": "cat", "count": 1}],
        "exclude": [{"class": "dog", "count": 1}],
    }
    assert verdict([det("cat", (0, 0, 10, 10))], metadata)[0] is True
    assert verdict([det("cat", (0, 0, 10, 10)), det("dog", (50, 0, 60, 10))], metadata) == (
        False,
        "expected dog<1, found 1",
    )


def test_summary_is_the_mean_over_tasks():
    results = [
        {"tag": "single_object", "prompt": "a", "correct": True},
        {"tag": "single_object", "prompt": "a", "correct": False},
        {"tag": "single_object", "prompt": "b", "correct": True},
        {"tag": "single_object", "prompt": "b", "correct": True},
        {"tag": "counting", "prompt": "c", "correct": False},
        {"tag": "counting", "prompt": "c", "correct": False},
    ]
    summary = summarize(results)
    assert summary["tasks"]["single_object"] == {"accuracy": 0.75, "correct": 3, "images": 4}
    assert summary["tasks"]["counting"] == {"accuracy": 0.0, "correct": 0, "images": 2}
    assert list(summary["tasks"]) == ["single_object", "counting"]
    assert summary["overall"] == pytest.approx(0.375)  # (0.75 + 0) / 2, not 3 / 6
    assert summary["correct_images"] == pytest.approx(0.5)
    assert (summary["images"], summary["prompts"], summary["correct_prompts"]) == (6, 3, pytest.approx(2 / 3))
    unnamed = summarize([{"tag": r["tag"], "correct": r["correct"]} for r in results])
    assert unnamed["overall"] == summary["overall"]
    assert unnamed["prompts"] is None and unnamed["correct_prompts"] is None
    with pytest.raises(ValueError, match="no GenEval results"):
        summarize([])


def test_metadata_checks():
    check_metadata([SINGLE, TWO, COUNTING, COLOR, POSITION, COLOR_ATTR])
    with pytest.raises(ValueError, match="GenEval metadata 1 include\\[0\\] names the class 'unicorn'"):
        check_metadata([SINGLE, {"tag": "single_object", "include": [{"class": "unicorn", "count": 1}]}])
    with pytest.raises(ValueError, match="colour 'teal'"):
        check_metadata([{"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}]}])
    with pytest.raises(ValueError, match="position \\['beside', 0\\]"):
        check_metadata(
            [
                {
                    "tag": "position",
                    "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["beside", 0]}],
                }
            ]
        )
    with pytest.raises(ValueError, match="needs a tag and an include list"):
        check_metadata([{"prompt": "a cat"}])


def test_image_inputs():
    images = as_pil_images(torch.tensor([[[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]]]))
    assert images[0].mode == "RGB" and images[0].size == (2, 1)
    assert images[0].getpixel((0, 0)) == (0, 128, 255)
    assert as_pil_images([Image.new("L", (3, 2))])[0].mode == "RGB"
    listed = as_pil_images([torch.zeros(3, 2, 5), Image.new("RGB", (4, 4))])
    assert [image.size for image in listed] == [(5, 2), (4, 4)]
    with pytest.raises(ValueError, match=r"tensor \(N, 3, H, W\), got shape \(3, 4, 4\)"):
        as_pil_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"must be \(3, H, W\), got shape \(1, 4, 4\)"):
        as_pil_images([torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\].*\\(x \\+ 1\\) / 2"):
        as_pil_images(torch.full((1, 3, 2, 2), -1.0))


# ---- models end to end -----------------------------------------------------------------------------------------------


def test_scorer_end_to_end(tiny_models):
    # every box is a dog or a cat and every box counts: the colour and position paths run on random models
    rules = GenEvalRules(threshold=0.0, counting_threshold=0.0)
    scorer = GenEvalScorer(
        str(tiny_models / "owlv2"), str(tiny_models / "clip"), rules=rules, classnames=("dog", "cat"), batch_size=2
    )
    metadata = [
        {"tag": "colors", "prompt": "a red dog", "include": [{"class": "dog", "count": 1, "color": "red"}]},
        {
            "tag": "counting",
            "prompt": "two cats",
            "include": [{"class": "cat", "count": 2}],
            "exclude": [{"class": "cat", "count": 3}],
        },
        {
            "tag": "position",
            "prompt": "a dog left of a cat",
            "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
        },
    ]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    results = scorer.score(images, metadata)
    assert len(results) == 3
    for result, record, image in zip(results, metadata, images):
        assert set(result) == {"tag", "prompt", "correct", "reason", "detections"}
        assert (result["tag"], result["prompt"]) == (record["tag"], record["prompt"])
        assert isinstance(result["correct"], bool) and isinstance(result["reason"], str)
        assert result["correct"] == (result["reason"] == "")
        for label, boxes in result["detections"].items():
            assert label in ("dog", "cat")
            for x1, y1, x2, y2, score in boxes:
                assert 0 <= x1 <= x2 <= image.width and 0 <= y1 <= y2 <= image.height and 0 <= score <= 1
    dog = [det("dog", (0, 0, 20, 20)), det("dog", (30, 10, 56, 40))]
    assert set(scorer.classify_colors(images[0], dog)) <= set(COLORS)
    assert len(scorer.detect(images)) == 3
    tensor_results = scorer.score(torch.rand(3, 3, 40, 56), metadata)
    assert [result["tag"] for result in tensor_results] == ["colors", "counting", "position"]
    assert len(scorer.score(list(torch.rand(3, 3, 24, 32)), metadata)) == 3  # a list of (3, H, W) tensors
    description = scorer.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["classnames"] == ["dog", "cat"] and description["rules"]["threshold"] == 0.0
    assert description["detector"] == str(tiny_models / "owlv2")
    summary = summarize(results + tensor_results)
    assert set(summary) == {"overall", "tasks", "images", "correct_images", "prompts", "correct_prompts"}
    assert list(summary["tasks"]) == ["counting", "colors", "position"] and summary["images"] == 6
    with pytest.raises(ValueError, match="got 3 images but 2 metadata records"):
        scorer.score(images, metadata[:2])
    with pytest.raises(ValueError, match="names the class 'bench', which the detector is not asked for"):
        scorer.score(images[:1], [{"tag": "single_object", "include": [{"class": "bench", "count": 1}]}])


def test_offline_hub_id_fails_fast_with_the_fix(tiny_models):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as error:
        GenEvalScorer("iqa-adapter-tests/no-such-owlv2", str(tiny_models / "clip"))
    message = str(error.value)
    assert "cannot load the OWLv2 detector's processor 'iqa-adapter-tests/no-such-owlv2'" in message
    assert "give a local folder" in message and "\n" not in message
    assert time.monotonic() - started < 10


def test_a_folder_of_the_wrong_kind(tmp_path):
    with pytest.raises(ModelLoadError, match=f"cannot load the OWLv2 detector's processor '{tmp_path}'"):
        GenEvalScorer(str(tmp_path), str(tmp_path))
