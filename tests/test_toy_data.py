import json

import numpy as np
import pandas as pd
import pytest
import torch

from iqa_adapter.datasets import load_image, open_dataset
from iqa_adapter.distortions import FAMILIES
from iqa_adapter.toy.data import load_images, toy_sample, write_toy_dataset
from iqa_adapter.toy.scenes import Scene, render_scene, scene_for


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "folder", 24, seed=7, progress=False)


def test_folder_and_shards_hold_the_same_samples(folder, tmp_path):
    shards = write_toy_dataset(tmp_path / "shards", 24, seed=7, format="shards", shard_size=10, progress=False)
    assert sorted(path.name for path in shards.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    from_folder, from_shards = list(open_dataset(str(folder))), list(open_dataset(str(shards)))
    assert [s.key for s in from_folder] == [s.key for s in from_shards] == [f"{i:09d}" for i in range(24)]
    assert (
        [s.caption for s in from_folder]
        == [s.caption for s in from_shards]
        == [scene_for(7, i).caption for i in range(24)]
    )
    for a, b in zip(from_folder, from_shards):
        assert torch.equal(load_image(a, None).image, load_image(b, None).image)


def test_images_are_the_rendered_scenes_degraded_as_recorded(folder):
    table = pd.read_parquet(folder / "metadata.parquet")
    images, captions = load_images(folder, progress=False)
    assert images.shape == (24, 3, 32, 32) and images.dtype == torch.uint8
    assert captions == list(table["caption"])
    for index, row in table.iterrows():
        record = json.loads((folder / f"{row['key']}.json").read_text())
        assert record["distortion"] == {"family": row["family"] or None, "level": pytest.approx(row["level"])}
        assert Scene.from_dict(record["scene"]) == scene_for(7, index)
        clean = torch.from_numpy(render_scene(scene_for(7, index))).permute(2, 0, 1)
        difference = (images[index].float() - clean.float()).abs().mean()
        if row["family"] == "":
            assert difference == 0 and row["level"] == 0
        else:
            assert row["family"] in FAMILIES and 0 < row["level"] <= 1
    assert (table["family"] == "").sum() < 24, "most images are degraded"


def test_a_sample_depends_only_on_seed_and_index():
    first, record = toy_sample(3, 11, 32, True, 0.0)
    second, _ = toy_sample(3, 11, 32, True, 0.0)
    assert np.array_equal(first, second) and record["distortion"]["family"] is not None
    clean, record = toy_sample(3, 11, 32, False, 0.0)
    assert np.array_equal(clean, render_scene(scene_for(3, 11))) and record["distortion"]["family"] is None


def test_a_finished_dataset_is_kept_and_other_parameters_are_refused(folder):
    stamp = (folder / "000000000.png").stat().st_mtime_ns
    write_toy_dataset(folder, 24, seed=7, progress=False)
    assert (folder / "000000000.png").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        write_toy_dataset(folder, 24, seed=8, progress=False)
    with pytest.raises(ValueError, match="format"):
        write_toy_dataset(folder / "x", 4, format="zip")
