import numpy as np
import pytest

from iqa_adapter.toy.scenes import (
    COLOURS,
    SHAPES,
    Scene,
    ToyObject,
    background_tones,
    caption_words,
    object_coverage,
    render_scene,
    rgb,
    scene_for,
    shape_mask,
)
from iqa_adapter.toy.tokenizer import toy_tokenizer, word_tokenizer


def test_same_seed_and_index_give_the_same_scene_and_pixels():
    for index in range(20):
        first, second = scene_for(3, index), scene_for(3, index)
        assert first == second
        assert np.array_equal(render_scene(first), render_scene(second))
    captions = {scene_for(3, index).caption for index in range(50)}
    assert len(captions) > 45, "different indices must give different scenes"
    assert scene_for(3, 0) != scene_for(4, 0)


def test_captions_describe_the_attributes():
    scenes = [scene_for(0, index) for index in range(400)]
    kinds = {(len(scene.objects), scene.background.pattern == "landscape") for scene in scenes}
    assert kinds == {(1, False), (2, False), (1, True)}
    for scene in scenes:
        for item in scene.objects:
            assert item.colour in scene.caption.split()
            if scene.background.pattern != "landscape":
                assert item.shape in scene.caption.split()
        assert scene.background.colour in scene.caption.split()
        assert scene.caption.startswith(("a ", "an "))
        assert " a orange" not in f" {scene.caption}" and " a " + "o" not in scene.caption


def test_full_captions_state_every_attribute():
    for index in range(50):
        scene = scene_for(1, index, kind="single", full_caption=True)
        item = scene.objects[0]
        words = scene.caption.split()
        assert {item.size, item.colour, item.shape, scene.background.pattern} <= set(words)


def test_object_colours_stand_out_from_the_background():
    for index in range(300):
        scene = scene_for(2, index)
        for item in scene.objects:
            assert all(np.linalg.norm(rgb(item.colour) - tone) > 100 for tone in background_tones(scene.background))
        if len(scene.objects) == 2:
            assert scene.objects[0].colour != scene.objects[1].colour


def test_scene_dict_round_trip():
    scene = scene_for(0, 7)
    assert Scene.from_dict(scene.to_dict()) == scene


@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_size_and_light_antialiasing(size):
    scene = Scene(
        (ToyObject("circle", "red", "large", "centre", 0.5, 0.5, 0.3),),
        scene_for(0, 2, kind="single").background.__class__("plain", "blue"),
        "a red circle",
    )
    image = render_scene(scene, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert tuple(image[size // 2, size // 2]) == COLOURS["red"]
    assert tuple(image[0, 0]) == COLOURS["blue"]
    blended = ~np.all((image == COLOURS["red"]) | (image == COLOURS["blue"]), axis=-1)
    assert 0 < blended.sum() < 4 * size, "edges are anti-aliased by a thin band of mixed pixels only"


def test_shapes_are_distinct_and_the_ring_has_a_hole():
    grid = np.linspace(-1.2, 1.2, 121)
    u, v = np.meshgrid(grid, grid)
    masks = {shape: shape_mask(shape, u, v) for shape in SHAPES}
    for first in SHAPES:
        for second in SHAPES:
            if first < second:
                assert (masks[first] != masks[second]).mean() > 0.03, (first, second)
    assert not masks["ring"][60, 60] and masks["circle"][60, 60] and masks["star"][60, 60]
    assert masks["star"][10, 60] and not masks["star"][110, 60], "the star points up"
    coverage = object_coverage(ToyObject("square", "red", "large", "centre", 0.5, 0.5, 0.25), 32)
    assert coverage.max() == 1 and coverage.min() == 0


def test_every_caption_word_is_one_token():
    tokenizer = toy_tokenizer()
    for word in caption_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    for index in range(300):
        caption = scene_for(5, index).caption
        ids = tokenizer(caption).input_ids
        assert len(ids) == len(caption.split()) + 2 <= tokenizer.model_max_length
        assert tokenizer.unk_token_id not in ids[1:-1], "CLIP's unknown token is its end token"
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"], "other words are spelt out"


def test_word_tokenizer_handles_words_that_share_pieces():
    words = ["ed", "red", "reds", "bed", "a"]
    tokenizer = word_tokenizer(words)
    assert [tokenizer.tokenize(word) for word in words] == [[word + "</w>"] for word in words]
    with pytest.raises(ValueError, match="lower-case"):
        word_tokenizer(["Red"])
