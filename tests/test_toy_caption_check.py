import dataclasses

import numpy as np
import pytest

from iqa_adapter.toy.caption_check import caption_following, position_of, read_object
from iqa_adapter.toy.scenes import Scene, render_scene, scene_for


def single_scenes(count: int, seed: int = 11) -> list[Scene]:
    return [scene_for(seed, index, kind="single", full_caption=True) for index in range(count)]


def test_rendered_scenes_read_back_as_their_captions():
    scenes = single_scenes(150)
    report = caption_following([render_scene(scene) for scene in scenes], scenes)
    assert report["accuracy"]["colour"] == report["accuracy"]["position"] == report["accuracy"]["background"] == 1.0
    assert report["accuracy"]["shape"] >= 0.9  # small stars can read as diamonds at 32 px
    assert report["found"] == 1.0
    assert 0.05 < report["chance"]["colour"] < 0.2 and 0.1 < report["chance"]["position"] < 0.3


def test_a_wrong_object_is_read_as_wrong():
    scene = single_scenes(1)[0]
    item = scene.objects[0]
    other_colour = next(
        name for name in ("red", "blue", "yellow") if name not in (item.colour, scene.background.colour)
    )
    other_shape = "ring" if item.shape != "ring" else "square"
    moved = dataclasses.replace(item, colour=other_colour, shape=other_shape, x=1 - item.x, y=1 - item.y)
    image = render_scene(dataclasses.replace(scene, objects=(moved,)))
    report = caption_following([image, render_scene(scene)], [scene, scene])
    assert read_object(image, scene.background).colour == other_colour
    if item.position != "centre":
        assert report["accuracy"]["position"] == 0.5
    assert report["accuracy"]["colour"] == 0.5 and report["accuracy"]["shape"] == 0.5


def test_the_background_colour_is_read_from_the_image():
    scene = single_scenes(1)[0]
    other = next(
        name for name in ("red", "blue", "green") if name not in (scene.background.colour, scene.objects[0].colour)
    )
    recoloured = dataclasses.replace(scene, background=dataclasses.replace(scene.background, colour=other))
    assert read_object(render_scene(scene), scene.background).background == scene.background.colour
    assert read_object(render_scene(recoloured), scene.background).background == other


def test_an_image_without_object_finds_nothing():
    scene = single_scenes(1)[0]
    empty = render_scene(dataclasses.replace(scene, objects=()))
    assert read_object(empty, scene.background).colour is None
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert read_object(noise, scene.background).colour is None


def test_chance_is_the_agreement_with_the_other_prompts():
    scenes = single_scenes(4)
    images = [render_scene(scenes[0])] * 4  # always the first scene, read on each prompt's background
    report = caption_following(images, scenes)
    read = [read_object(image, scene.background).colour for image, scene in zip(images, scenes)]
    wanted = [scene.objects[0].colour for scene in scenes]
    assert report["accuracy"]["colour"] == pytest.approx(np.mean([r == w for r, w in zip(read, wanted)]))
    expected = np.mean([read[i] == wanted[j] for i in range(4) for j in range(4) if i != j])
    assert report["chance"]["colour"] == pytest.approx(expected)
    assert report["accuracy"]["colour"] < 1


def test_positions():
    assert position_of(0.5, 0.55) == "centre"
    assert position_of(0.2, 0.45) == "left" and position_of(0.8, 0.6) == "right"
    assert position_of(0.45, 0.2) == "top" and position_of(0.5, 0.9) == "bottom"


def test_refuses_mismatched_inputs():
    scenes = single_scenes(2)
    with pytest.raises(ValueError, match="as many scenes"):
        caption_following([render_scene(scenes[0])], scenes)
    with pytest.raises(ValueError, match="square"):
        read_object(np.zeros((32, 16, 3), dtype=np.uint8), scenes[0].background)
