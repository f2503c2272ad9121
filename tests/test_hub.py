"""Adapters on the Hugging Face Hub: loading by hub id from huggingface_hub's cache offline, and the upload of
``push_to_hub`` / ``iqa-adapter push`` with its model card, round-tripped through a Hub served on this machine
(huggingface_hub's real client on both sides)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard, constants
from safetensors.torch import load as load_safetensors

from conftest import two_metrics
from hub_fixtures import FakeHub, put_in_hub_cache
from iqa_adapter import IQAAdapter
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.cli import main
from iqa_adapter.hub import HubDownloadError
from iqa_adapter.model_card import adapter_model_card
from iqa_adapter.toy.world import shipped_world


def adapter_files(adapter: IQAAdapter, folder) -> dict[str, bytes]:
    adapter.save_pretrained(folder)
    return {name: (folder / name).read_bytes() for name in ("config.json", "adapter.safetensors")}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """One tiny adapter at two revisions of a hub repository: ``main`` holds it at the top, the older commit in
    ``adapters/v1`` with other weights."""
    root = tmp_path_factory.mktemp("versions")
    pipe = tiny_sd_pipeline(seed=0)
    new, old = (IQAAdapter.for_unet(pipe, two_metrics(), seed=seed, base_model="org/base") for seed in (1, 2))
    return root, new, old, adapter_files(new, root / "new"), adapter_files(old, root / "old")


def same_weights(a: IQAAdapter, b: IQAAdapter) -> bool:
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_a_hub_id_loads_from_the_cache_offline_by_revision_and_subfolder(two_versions, tmp_path, monkeypatch):
    _, new, old, new_files, old_files = two_versions
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(tmp_path / "hub", "org/quality", {f"adapters/v1/{k}": v for k, v in old_files.items()}, "a" * 40)
    put_in_hub_cache(tmp_path / "hub", "org/quality", new_files, "b" * 40)  # main now points here

    assert same_weights(IQAAdapter.from_pretrained("org/quality"), new)
    assert same_weights(IQAAdapter.from_pretrained("org/quality", revision="a" * 40, subfolder="adapters/v1"), old)
    with pytest.raises(
        HubDownloadError,
        match="'org/quality': HF_HUB_OFFLINE is set, and its local cache has no "
        "adapters/v1/config.json at revision 'main'",
    ):
        IQAAdapter.from_pretrained("org/quality", revision="main", subfolder="adapters/v1")
    with pytest.raises(
        HubDownloadError, match="cannot load the adapter 'org/absent': it is not a local folder, HF_HUB_OFFLINE is set"
    ):
        IQAAdapter.from_pretrained("org/absent")
    with pytest.raises(ValueError, match="a revision applies to hub ids only"):
        IQAAdapter.from_pretrained(tmp_path, revision="main")


def test_the_cli_takes_hub_ids_with_revision_and_subfolder(two_versions, tmp_path, monkeypatch, capsys):
    _, _, _, new_files, old_files = two_versions
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    put_in_hub_cache(tmp_path / "hub", "org/quality", {f"v1/{k}": v for k, v in old_files.items()}, "c" * 40)
    assert main(["info", "--adapter", "org/quality", "--revision", "c" * 40, "--subfolder", "v1"]) == 0
    assert "base model: org/base" in capsys.readouterr().out
    assert main(["info", "--adapter", "org/quality", "--subfolder", "v2"]) == 2
    assert "its local cache has no v2/config.json at revision 'main'" in capsys.readouterr().err


def test_the_model_card_is_valid_and_tells_how_to_use_the_adapter(two_versions):
    _, new, _, _, _ = two_versions
    config = new.config
    config.extra = {"training": {"data": "cc3m-shards", "steps": 1200, "batch_size": 640, "train_scale": 1.0}}
    evaluation = {
        "target_metrics": ["sharp"],
        "n_images": 48,
        "relgain": {"p99": {"sharp": 12.34, "aes": -1.5}, "p1": {"sharp": -40.0, "aes": 2.25}},
        "claims": {"p99_improves_every_target_metric": True, "p1_degrades_every_target_metric": True},
    }
    card = adapter_model_card(config, "me/sharp-adapter", evaluation=evaluation, license="apache-2.0")
    data = ModelCard(card).data.to_dict()  # huggingface_hub's own parser of the front matter
    assert data["base_model"] == "org/base" and data["library_name"] == "iqa-adapter"
    assert data["license"] == "apache-2.0" and "metric:sharp" in data["tags"] and "metric:aes" in data["tags"]
    stats = {m.name: m for m in config.metrics}
    assert f"| sharp | yes | 0.5 | 0.1 | {stats['sharp'].raw_from_percentile(1):.4g} |" in card
    assert "| steps | 1200 |" in card and "| batch_size | 640 |" in card
    assert "| p99 | +12.3 | -1.5 |" in card and "| p1 | -40.0 | +2.2 |" in card and "sharp*" in card
    assert 'IQAAdapter.from_pretrained("me/sharp-adapter")' in card
    assert "--quality sharp=p99 --quality aes=p99" in card and "Trained at adapter scale 1;" in card


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "iqa_adapter", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_push_then_generate_from_the_hub_round_trip(tmp_path):
    """``iqa-adapter push`` uploads the toy world's adapter with a card through huggingface_hub to a Hub on this
    machine; ``generate --adapter ID`` in a fresh cache downloads it and makes the same image as the folder."""
    world = shipped_world()
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"target_metrics": ["loda"], "relgain": {"p99": {"loda": 3.0}, "p1": {"loda": -9.0}}}))
    with FakeHub() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_CACHE": str(tmp_path / "cache"),
            "HF_TOKEN": "hf_x",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        pushed = cli(
            "push",
            "--adapter",
            str(world.adapter),
            "--repo-id",
            "me/toy-quality",
            "--private",
            "--evaluation",
            str(report),
            "--license",
            "apache-2.0",
            env=env,
        )
        assert pushed.returncode == 0, pushed.stderr
        assert f"uploaded {world.adapter} to me/toy-quality: {hub.endpoint}/me/toy-quality/commit/" in pushed.stdout
        files = hub.repos["me/toy-quality"]["main"]
        assert sorted(files) == ["README.md", "adapter.safetensors", "config.json"]
        assert hub.private == {"me/toy-quality"} and hub.commits == [("me/toy-quality", "Upload IQA-Adapter")]
        local = IQAAdapter.from_pretrained(world.adapter).state_dict()
        uploaded = load_safetensors(files["adapter.safetensors"])
        assert uploaded.keys() == local.keys() and all(torch.equal(uploaded[k], local[k]) for k in local)
        card = files["README.md"].decode()
        assert "| p99 | +3.0 |" in card and ModelCard(card).data.license == "apache-2.0"
        assert [metadata["library_name"] for metadata in hub.validated_cards] == ["iqa-adapter"]

        common = [
            "generate",
            "--prompt",
            "a red circle",
            "--quality",
            "cnniqa=p99",
            "--quality",
            "aesthetic=p99",
            "--steps",
            "3",
            "--no-progress",
        ]
        from_hub = cli(*common, "--adapter", "me/toy-quality", "--out", str(tmp_path / "hub"), env=env)
        assert from_hub.returncode == 0, from_hub.stderr
        assert (tmp_path / "cache" / "models--me--toy-quality" / "refs" / "main").is_file()
        missing = cli("info", "--adapter", "me/absent", env=env)
        assert missing.returncode == 2 and "the Hub has no such repository or it is private" in missing.stderr
        other_revision = cli("info", "--adapter", "me/toy-quality", "--revision", "v9", env=env)
        assert other_revision.returncode == 2 and "it has no revision 'v9'" in other_revision.stderr
        assert not hub.unknown_requests
    offline = cli(
        *common, "--adapter", "me/toy-quality", "--out", str(tmp_path / "offline"), env={**env, "HF_HUB_OFFLINE": "1"}
    )  # the Hub is gone: the cache serves the same files
    assert offline.returncode == 0, offline.stderr
    assert main(common + ["--adapter", str(world.adapter), "--out", str(tmp_path / "folder")]) == 0
    images = [(tmp_path / name / "0000.png").read_bytes() for name in ("hub", "offline", "folder")]
    assert images[0] == images[1] == images[2]


def test_push_refuses_offline_and_bad_repository_ids_in_one_line(tmp_path, monkeypatch, capsys):
    folder = str(shipped_world().adapter)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["push", "--adapter", folder, "--repo-id", "me/toy"]) == 2
    assert capsys.readouterr().err == (
        "error: cannot upload the adapter to 'me/toy': HF_HUB_OFFLINE is set; unset it to upload\n"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert main(["push", "--adapter", folder, "--repo-id", "me/bad name!"]) == 2
    assert "cannot upload the adapter: 'me/bad name!' is not a valid repository id" in capsys.readouterr().err
    assert main(["push", "--adapter", folder, "--repo-id", "me/toy", "--evaluation", str(tmp_path / "none.json")]) == 2
    assert "evaluation report" in capsys.readouterr().err
    for content, problem in (
        ([1, 2], "it holds a list, not a JSON object"),
        ({"relgain": {"p99": 3}}, "its relgain is not a mapping of conditions to {metric: value}"),
        (
            {"relgain": {"p99": {"a": 1.0}, "p1": {"b": 2.0}}},
            "its relgain tables do not give a number for the same metrics",
        ),
        ({"relgain": {"p99": {"a": "high"}}}, "its relgain tables do not give a number for the same metrics"),
    ):
        report = tmp_path / "report.json"
        report.write_text(json.dumps(content))
        assert main(["push", "--adapter", folder, "--repo-id", "me/toy", "--evaluation", str(report)]) == 2
        assert capsys.readouterr().err == (
            f"error: the evaluation report is not a report.json of `iqa-adapter evaluate`: {problem}\n"
        )
