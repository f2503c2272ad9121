"""Prompt sets: every format from small files, category filters, seeded sampling, detection and errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa_adapter.evaluation.prompts import (
    Prompt,
    PromptFileError,
    detect_format,
    load_prompts,
)

PARTI_ROWS = [
    ("bond", "Abstract", "Basic", "Biology-inspired concepts with multiple meanings"),
    ("a shiba inu", "Animals", "Basic", ""),
    (
        '"G I G G L E" painted in thick colorful lettering as graffiti on a faded red brick wall.',
        "Illustrations",
        "Writing & Symbols",
        "",
    ),
    (
        'A robot painted as graffiti on a brick wall. The words "Fly an airplane" are written on the wall.',
        "Outdoor Scenes",
        "Complex",
        "",
    ),
    ("a capybara", "Animals", "Basic", ""),
    ("A bowl of Pho", "Food & Beverage", "Basic", ""),
]

GENEVAL_RECORDS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {
        "tag": "two_object",
        "include": [{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}],
        "prompt": "a photo of a bench and a sports ball",
    },
    {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "a photo of two clocks",
    },
    {
        "tag": "colors",
        "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}],
        "prompt": "a photo of a blue fire hydrant",
    },
    {
        "tag": "position",
        "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a teddy bear",
    },
    {
        "tag": "color_attr",
        "include": [
            {"class": "wine glass", "count": 1, "color": "purple"},
            {"class": "apple", "count": 1, "color": "black"},
        ],
        "prompt": "a photo of a purple wine glass and a black apple",
    },
]


def write_parti(path: Path, rows=PARTI_ROWS) -> Path:
    lines = ["Prompt\tCategory\tChallenge\tNote"] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_geneval(path: Path, records=GENEVAL_RECORDS) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_coco(folder: Path, image_folder: str = "val2014") -> Path:
    """The usual layout: annotations/captions_val2014.json beside val2014/ with the images."""
    (folder / "annotations").mkdir(parents=True)
    (folder / image_folder).mkdir()
    images = [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 8, "width": 8},
        {"id": 73, "file_name": "COCO_val2014_000000000073.jpg", "height": 8, "width": 8},
    ]
    for image in images:
        Image.new("RGB", (8, 8), "red").save(folder / image_folder / image["file_name"])
    annotations = [
        {"id": 1001, "image_id": 42, "caption": "A dog on a bench. "},
        {"id": 1002, "image_id": 73, "caption": "Two clocks on a wall."},
        {"id": 1003, "image_id": 42, "caption": "A brown dog sitting outside."},
    ]
    path = folder / "annotations" / "captions_val2014.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


# ---- formats ---------------------------------------------------------------------------------------------------------


def test_text_one_prompt_per_non_empty_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red car\n\n  a blue bird  \n\n")
    prompts = load_prompts(path)
    assert [prompt.text for prompt in prompts] == ["a red car", "a blue bird"]
    assert [prompt.index for prompt in prompts] == [0, 2]  # line numbers in the file
    assert [prompt.key for prompt in prompts] == ["0", "2"]
    assert prompts[0].category is None and prompts[0].metadata == {} and prompts[0].image is None


def test_parti_tsv_keeps_quotes_and_challenge(tmp_path):
    prompts = load_prompts(write_parti(tmp_path / "PartiPrompts.tsv"), format="parti")
    assert len(prompts) == len(PARTI_ROWS)
    assert prompts[2].text.startswith('"G I G G L E" painted')  # a leading quote is text, not CSV quoting
    assert '"Fly an airplane"' in prompts[3].text
    assert prompts[0].category == "Abstract"
    assert prompts[0].metadata == {"Challenge": "Basic", "Note": "Biology-inspired concepts with multiple meanings"}
    assert prompts[2].metadata["Challenge"] == "Writing & Symbols"


def test_drawbench_csv_with_quoted_commas(tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text(
        'Prompts,Category\nA red colored car.,Colors\n"A storefront with ""Text to Image"" written on it, '
        'in neon.",Text\nA black colored dog.,Colors\n',
        encoding="utf-8",
    )
    prompts = load_prompts(path)
    assert prompts.format == "drawbench"
    assert [prompt.category for prompt in prompts] == ["Colors", "Text", "Colors"]
    assert prompts[1].text == 'A storefront with "Text to Image" written on it, in neon.'


def test_drawbench_variant_header_bom_and_extra_columns(tmp_path):
    path = tmp_path / "drawbench.csv"
    path.write_text("\ufeffprompt,category,Upsampled\nA cat.,Colors,A fluffy cat.\n", encoding="utf-8")
    (prompt,) = load_prompts(path, format="drawbench")
    assert (prompt.text, prompt.category, prompt.metadata) == ("A cat.", "Colors", {"Upsampled": "A fluffy cat."})


def test_geneval_metadata_kept_as_given(tmp_path):
    prompts = load_prompts(write_geneval(tmp_path / "evaluation_metadata.jsonl"))
    assert prompts.format == "geneval"
    assert [prompt.category for prompt in prompts] == [record["tag"] for record in GENEVAL_RECORDS]
    assert [prompt.metadata for prompt in prompts] == GENEVAL_RECORDS
    assert prompts[2].metadata["exclude"] == [{"class": "clock", "count": 3}]
    assert prompts[4].text == "a photo of a dog right of a teddy bear"


def test_coco_captions_find_sibling_image_folder(tmp_path):
    path = write_coco(tmp_path)
    prompts = load_prompts(path)
    assert prompts.format == "coco"
    assert [prompt.key for prompt in prompts] == ["1001", "1002", "1003"]
    assert prompts[0].text == "A dog on a bench."
    assert prompts[0].image == str((tmp_path / "val2014" / "COCO_val2014_000000000042.jpg").resolve())
    assert prompts[2].image == prompts[0].image
    assert prompts[1].metadata == {"image_id": 73, "file_name": "COCO_val2014_000000000073.jpg"}
    assert all(Path(prompt.image).is_absolute() for prompt in prompts)


def test_coco_explicit_image_root_and_missing_images(tmp_path):
    path = write_coco(tmp_path, image_folder="elsewhere")
    with pytest.raises(PromptFileError, match="cannot find the images.*image_root"):
        load_prompts(path)
    prompts = load_prompts(path, image_root=tmp_path / "elsewhere")
    assert Path(prompts[1].image).parent == (tmp_path / "elsewhere").resolve()
    (tmp_path / "elsewhere" / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(PromptFileError, match=r"1 of 3 images .* missing .*000073\.jpg"):
        load_prompts(path, image_root=tmp_path / "elsewhere")


def test_coco_malformed_entries(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(
        json.dumps(
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 5, "image_id": 2, "caption": "x"}]}
        )
    )
    with pytest.raises(PromptFileError, match="annotation 5 names image 2"):
        load_prompts(path)
    path.write_text(json.dumps({"images": [], "captions": []}))
    with pytest.raises(PromptFileError, match="images and annotations.*found: images, captions"):
        load_prompts(path)


# ---- categories and sampling -----------------------------------------------------------------------------------------


def test_category_filter_is_case_insensitive_and_keeps_order(tmp_path):
    path = write_parti(tmp_path / "parti.tsv")
    prompts = load_prompts(path, categories=["animals", "Food & Beverage"])
    assert [prompt.text for prompt in prompts] == ["a shiba inu", "a capybara", "A bowl of Pho"]
    assert [prompt.index for prompt in prompts] == [1, 4, 5]
    description = prompts.describe()
    assert description["categories"] == {"Animals": 2, "Food & Beverage": 1}
    assert (description["count"], description["available"], description["sample"]) == (3, 6, None)
    assert description["category_filter"] == ["animals", "Food & Beverage"]


def test_geneval_filter_by_tag(tmp_path):
    prompts = load_prompts(write_geneval(tmp_path / "meta.jsonl"), categories="counting")
    assert [prompt.metadata["tag"] for prompt in prompts] == ["counting"]


def test_unknown_category_lists_those_present(tmp_path):
    with pytest.raises(PromptFileError) as error:
        load_prompts(write_parti(tmp_path / "parti.tsv"), categories=["Animals", "Dinosaurs"])
    message = str(error.value)
    assert "'Dinosaurs'" in message and "Abstract, Animals, Illustrations, Outdoor Scenes, Food & Beverage" in message
    assert "\n" not in message


def test_category_filter_on_a_set_without_categories(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n")
    with pytest.raises(PromptFileError, match="has no categories; drop the category filter"):
        load_prompts(path, categories="Animals")


def test_seeded_sample_is_reproducible_and_keeps_order(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(50)))
    first = load_prompts(path, max_prompts=10, seed=3)
    again = load_prompts(path, max_prompts=10, seed=3)
    other = load_prompts(path, max_prompts=10, seed=4)
    assert first == again
    assert len(first) == 10
    indices = [prompt.index for prompt in first]
    assert indices == sorted(indices)
    expected = np.sort(np.random.default_rng(3).choice(50, size=10, replace=False)).tolist()
    assert indices == expected
    assert [prompt.index for prompt in other] != indices
    assert first.describe() == {
        "format": "text",
        "source": str(path),
        "count": 10,
        "available": 50,
        "categories": {},
        "with_images": 0,
        "category_filter": None,
        "sample": {"max_prompts": 10, "seed": 3},
    }


def test_sample_larger_than_the_set_keeps_everything(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a\nb\nc\n")
    prompts = load_prompts(path, max_prompts=10)
    assert [prompt.text for prompt in prompts] == ["a", "b", "c"]
    assert prompts.describe()["sample"] is None


def test_sampling_after_category_filter(tmp_path):
    rows = [(f"animal {i}", "Animals", "Basic", "") for i in range(20)] + [
        (f"car {i}", "Vehicles", "Basic", "") for i in range(20)
    ]
    prompts = load_prompts(write_parti(tmp_path / "p.tsv", rows), categories="Vehicles", max_prompts=5, seed=0)
    assert len(prompts) == 5 and all(prompt.category == "Vehicles" for prompt in prompts)


def test_coco_sampling_resolves_only_sampled_images(tmp_path):
    path = write_coco(tmp_path)
    (tmp_path / "val2014" / "COCO_val2014_000000000073.jpg").unlink()
    seed = next(seed for seed in range(100) if _sample_keys(seed) == ["1001"])
    (prompt,) = load_prompts(path, max_prompts=1, seed=seed)
    assert prompt.key == "1001" and prompt.image.endswith("000042.jpg")


def _sample_keys(seed: int) -> list[str]:
    """Which annotation keys a one-prompt sample of the three-caption COCO file takes."""
    chosen = np.sort(np.random.default_rng(seed).choice(3, size=1, replace=False))
    return [["1001", "1002", "1003"][i] for i in chosen]


# ---- detection -------------------------------------------------------------------------------------------------------


def test_auto_detection(tmp_path):
    assert detect_format(write_parti(tmp_path / "parti.tsv")) == "parti"
    drawbench_tsv = tmp_path / "drawbench.tsv"
    drawbench_tsv.write_text("Prompts\tCategory\nA cat.\tColors\n")
    assert detect_format(drawbench_tsv) == "drawbench"
    csv_path = tmp_path / "db.csv"
    csv_path.write_text("Prompts,Category\nA cat.,Colors\n")
    assert detect_format(csv_path) == "drawbench"
    assert detect_format(write_geneval(tmp_path / "meta.jsonl")) == "geneval"
    assert detect_format(write_geneval(tmp_path / "metadata")) == "geneval"  # no suffix: sniffed
    assert detect_format(write_coco(tmp_path / "coco")) == "coco"
    text = tmp_path / "prompts"
    text.write_text("a cat, sitting\n")
    assert detect_format(text) == "text"
    assert load_prompts(drawbench_tsv)[0].category == "Colors"


# ---- errors ----------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="nope.txt does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(PromptFileError, match="is a folder"):
        load_prompts(tmp_path)


def test_wrong_columns_are_listed(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("caption,label\nA cat.,Animals\n")
    with pytest.raises(PromptFileError, match=r"no prompt column \(found columns: caption, label\)"):
        load_prompts(path)


def test_malformed_json_line_is_named(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(GENEVAL_RECORDS[0]) + "\n" + '{"tag": "counting", "include": [\n')
    with pytest.raises(PromptFileError, match=r"meta\.jsonl line 2 is not valid JSON"):
        load_prompts(path)


def test_geneval_record_without_include(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps({"tag": "counting", "prompt": "two cats"}) + "\n")
    with pytest.raises(PromptFileError, match="line 1 has no include"):
        load_prompts(path)


def test_malformed_coco_json_names_the_line(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(PromptFileError, match=r"captions\.json is not valid JSON .* line 2"):
        load_prompts(path)


def test_empty_set_and_bad_arguments(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n  \n")
    with pytest.raises(PromptFileError, match="holds no prompts"):
        load_prompts(path)
    path.write_text("a cat\n")
    with pytest.raises(PromptFileError, match="unknown prompt format 'yaml'"):
        load_prompts(path, format="yaml")
    with pytest.raises(ValueError, match="max_prompts must be an integer >= 1, got 0"):
        load_prompts(path, max_prompts=0)


def test_prompt_key_defaults_to_index():
    assert Prompt("a cat", 7).key == "7"
    assert Prompt("a cat", 7, key="ann-3").key == "ann-3"
