"""The toy world that ships in the package: complete, small, safetensors only, and the default of `generate`."""

import argparse
import json

from PIL import Image

from iqa_adapter import IQAAdapter
from iqa_adapter.cli import main
from iqa_adapter.cli_common import resolve_model_and_sampling
from iqa_adapter.toy.world import ADAPTER_METRICS, CONDITIONING_MODELS, shipped_world

MAX_BYTES = 20 * 2**20


def test_the_shipped_world_is_complete_small_and_holds_no_pickles():
    world = shipped_world().check()
    files = [path for path in world.root.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) < MAX_BYTES
    weights = [path for path in files if path.suffix not in {".json", ".txt", ".md"}]
    assert weights and all(path.suffix == ".safetensors" for path in weights), weights
    assert not list(world.root.glob("*-work")) and not list(world.root.rglob("checkpoints"))


def test_the_shipped_records_hold_no_path_of_the_building_machine(capsys):
    world = shipped_world()
    texts = {
        path.relative_to(world.root): path.read_text()
        for path in world.root.rglob("*.json")
        if path.name != "tokenizer.json"
    }  # the vocabulary holds "/" as a token
    assert not [name for name, text in texts.items() if '"/' in text or ":/" in text or "/work/" in text]
    assert main(["info", "--adapter", str(world.adapter)]) == 0
    assert f"base model: ../base (= {world.base.resolve()})" in capsys.readouterr().out


def test_the_shipped_adapter_carries_its_metrics_statistics_and_default_targets():
    adapter = IQAAdapter.from_pretrained(shipped_world().adapter)
    assert tuple(adapter.metric_names) == ADAPTER_METRICS
    for stats in adapter.config.metrics:
        assert stats.std > 0 and len(stats.percentiles) >= 5
    assert set(adapter.config.default_targets) == set(ADAPTER_METRICS)
    for metric in CONDITIONING_MODELS:  # the rows of the cross-metric matrix: one learned model each
        assert IQAAdapter.from_pretrained(shipped_world().metric_adapter(metric)).metric_names == [metric]


def test_generate_needs_only_a_prompt_and_one_target(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--prompt",
                "a large red circle on the left on a plain blue background",
                "--quality",
                "cnniqa=p99",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "embedded toy world" in capsys.readouterr().out
    sidecar = json.loads((out / "0000.json").read_text())
    assert sidecar["quality"] == {"cnniqa": "p99", "aesthetic": "p50"} and sidecar["steps"] == 20  # default target
    assert Image.open(out / "0000.png").size == (32, 32)


def test_the_world_adapters_have_names_for_the_command_line():
    """--adapter toy:<name> is one of the world's adapters, alone, repeated, or named for evaluate."""
    world = shipped_world()

    def resolved(adapter):
        args = argparse.Namespace(base=None, adapter=adapter, steps=None, guidance=None)
        resolve_model_and_sampling(args)
        return args.adapter

    assert resolved("toy:cnniqa") == str(world.metric_adapter("cnniqa"))
    assert resolved(["toy:main", "toy:reference"]) == [str(world.adapter), str(world.reference_adapter)]
    assert resolved(["iqa=toy:loda", "folder/toy:x"]) == [f"iqa={world.metric_adapter('loda')}", "folder/toy:x"]
    assert IQAAdapter.from_pretrained(resolved("toy:aesthetic")).metric_names == ["aesthetic"]
