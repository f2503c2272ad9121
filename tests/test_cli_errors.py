"""Bad input meets the command line: one line that names the problem, exit code 2, never a traceback.

Each case is a command a user could type with one thing wrong. Most fail before any model is loaded; the rest
fail in seconds on the embedded toy world. Two run as real processes to check the console entry as well.
"""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from iqa_adapter import IQAAdapter
from iqa_adapter.architectures import tiny_sd_pipeline
from iqa_adapter.cli import main
from iqa_adapter.toy.world import shipped_world
from test_convert import official_checkpoint, write

TOY = shipped_world()
FIRST, SECOND = IQAAdapter.from_pretrained(TOY.adapter).metric_names[:2]  # the toy adapter's conditioning metrics


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Broken adapters, images and checkpoints, and a tiny base model, as a user might have them on disk."""
    root = tmp_path_factory.mktemp("bad")

    def adapter_copy(name: str):
        folder = root / name
        shutil.copytree(TOY.adapter, folder)
        return folder

    truncated = adapter_copy("truncated_adapter")
    weights = truncated / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (adapter_copy("empty_adapter") / "adapter.safetensors").write_bytes(b"")
    unknown = adapter_copy("unknown_key_adapter")
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    broken = adapter_copy("broken_json_adapter")
    (broken / "config.json").write_text((broken / "config.json").read_text()[:-40])

    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(root / "good.png")
    (root / "truncated.png").write_bytes((root / "good.png").read_bytes()[:60])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    (root / "folder.png").mkdir()
    (root / "a_file").write_text("not a folder")

    pipe = tiny_sd_pipeline(seed=0)
    pipe.save_pretrained(root / "base")
    image_proj, ip_adapter = official_checkpoint(pipe.unet, feature_dim=3)  # 2 metrics + the flag feature
    write(root / "two_metrics.safetensors", image_proj, ip_adapter, "safetensors")
    torch.save({"a": torch.zeros(2)}, root / "pickle.safetensors")
    torch.save({"image_proj": {"x": ValueError("an object")}, "ip_adapter": {}}, root / "objects.bin")
    return root


def generate(*extra: str) -> list[str]:
    return ["generate", "--prompt", "a red circle", "--no-progress", *extra]


def pairs(f, *extra: str) -> list[str]:
    return ["pairs", "--prompt", "a red circle", "--no-progress", "--out", f"{f}/pairs", *extra]


CASES = [
    # the user's files
    (
        "truncated adapter weights",
        lambda f: generate("--adapter", f"{f}/truncated_adapter", "--quality", "cnniqa=p99"),
        "adapter.safetensors is not a readable safetensors file",
    ),
    (
        "empty adapter weights",
        lambda f: generate("--adapter", f"{f}/empty_adapter", "--quality", "cnniqa=p99"),
        "the file is empty, truncated or corrupt",
    ),
    (
        "info on truncated weights",
        lambda f: ["info", "--adapter", f"{f}/truncated_adapter"],
        "not a readable safetensors file",
    ),
    (
        "unknown config key",
        lambda f: generate("--adapter", f"{f}/unknown_key_adapter", "--quality", "cnniqa=p99"),
        "has unknown keys: colour",
    ),
    (
        "broken config JSON",
        lambda f: ["info", "--adapter", f"{f}/broken_json_adapter"],
        "broken_json_adapter/config.json is not valid JSON",
    ),
    ("truncated --reference", lambda f: generate("--reference", f"{f}/truncated.png"), "truncated or corrupt"),
    ("empty --reference", lambda f: generate("--reference", f"{f}/empty.png"), "is an empty file"),
    ("non-image --reference", lambda f: generate("--reference", f"{f}/text.png"), "is not an image"),
    ("folder --reference", lambda f: generate("--reference", f"{f}/folder.png"), "is a folder, not an image file"),
    (
        "missing --negative-reference",
        lambda f: generate("--reference", f"{f}/good.png", "--negative-reference", f"{f}/missing.png"),
        "does not exist",
    ),
    (
        "truncated --init-image",
        lambda f: generate("--quality", "cnniqa=p99", "--init-image", f"{f}/truncated.png"),
        "--init-image",
    ),
    (
        "empty --init-image",
        lambda f: generate("--quality", "cnniqa=p99", "--init-image", f"{f}/empty.png"),
        "is an empty file",
    ),
    (
        "non-image --init-image",
        lambda f: generate("--quality", "cnniqa=p99", "--init-image", f"{f}/text.png"),
        "is not an image",
    ),
    (
        "folder --init-image",
        lambda f: generate("--quality", "cnniqa=p99", "--init-image", f"{f}/folder.png"),
        "is a folder",
    ),
    ("--out is a file", lambda f: generate("--quality", "cnniqa=p99", "--out", f"{f}/a_file"), "is a file"),
    (
        "pickle named .safetensors",
        lambda f: [
            "convert-official",
            "--checkpoint",
            f"{f}/pickle.safetensors",
            "--base",
            f"{f}/base",
            "--metrics",
            "topiq_nr,laion_aes",
            "--out",
            f"{f}/o1",
        ],
        "looks like a torch pickle file",
    ),
    (
        "pickle refused by weights_only",
        lambda f: [
            "convert-official",
            "--checkpoint",
            f"{f}/objects.bin",
            "--base",
            f"{f}/base",
            "--metrics",
            "topiq_nr",
            "--trust-pickle",
            "--out",
            f"{f}/o2",
        ],
        "holds more than tensors",
    ),
    (
        "one metric for a two-metric checkpoint",
        lambda f: [
            "convert-official",
            "--checkpoint",
            f"{f}/two_metrics.safetensors",
            "--base",
            f"{f}/base",
            "--metrics",
            "topiq_nr",
            "--out",
            f"{f}/o3",
        ],
        "2 metrics with the flag feature",
    ),
    (
        "missing --prompts",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompts", f"{f}/none.txt", "--out", f"{f}/e"],
        "does not exist",
    ),
    (
        "--max-prompts without --prompts",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompt", "x", "--max-prompts", "3", "--out", f"{f}/e"],
        "select from a --prompts",
    ),
    (
        "--percentiles without p99",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompt", "x", "--percentiles", "1,50", "--out", f"{f}/e"],
        "must include p1 and p99",
    ),
    (
        "--percentiles not numbers",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompt", "x", "--percentiles", "1,x", "--out", f"{f}/e"],
        "argument --percentiles",
    ),
    (
        "two adapters with one name",
        lambda f: [
            "evaluate",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--adapter",
            f"a={f}/truncated_adapter",
            "--adapter",
            f"a={f}/empty_adapter",
            "--out",
            f"{f}/e",
        ],
        "two adapters are named 'a'",
    ),
    (
        "--metric-group without =",
        lambda f: [
            "evaluate",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--metric-group",
            "sharpness",
            "--out",
            f"{f}/e",
        ],
        "--metric-group takes NAME=COLUMN,COLUMN",
    ),
    (
        "--relgain-only of no adapter",
        lambda f: [
            "evaluate",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--relgain-only",
            "nobody",
            "--out",
            f"{f}/e",
        ],
        "relgain-only adapters ['nobody']",
    ),
    (
        "unknown distance",
        lambda f: [
            "evaluate",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--distances",
            "ssim,lpipz",
            "--out",
            f"{f}/e",
        ],
        "unknown distance 'lpipz'",
    ),
    (
        "unknown extractor",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompt", "x", "--fid-extractor", "dino", "--out", f"{f}/e"],
        "unknown feature extractor 'dino'",
    ),
    (
        "one extractor name twice",
        lambda f: [
            "evaluate",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--fid-extractor",
            "a=clip",
            "--fid-extractor",
            "a=dinov2",
            "--out",
            f"{f}/e",
        ],
        "feature extractors are listed twice: a",
    ),
    (
        "pairs: unknown metric in --high",
        lambda f: pairs(f, "--high", "topiq=p99", "--low", f"{FIRST}=p1"),
        "unknown metric(s) 'topiq'; this adapter is conditioned on:",
    ),
    (
        "pairs: --low level not below --high",
        lambda f: pairs(f, "--high", f"{FIRST}=p50", "--low", f"{FIRST}=p10,p90"),
        f"--low {FIRST}=p90 is not below --high {FIRST}=p50",
    ),
    (
        "pairs: --low lists of other lengths",
        lambda f: pairs(f, "--high", f"{FIRST}=p99", "--low", f"{FIRST}=p1,p5", "--low", f"{SECOND}=p1,p5,p9"),
        "the same number of levels",
    ),
    (
        "pairs: several --high targets",
        lambda f: pairs(f, "--high", f"{FIRST}=p99,p90", "--low", f"{FIRST}=p1"),
        "--high takes one target per metric",
    ),
    ("pairs: no --high", lambda f: pairs(f, "--low", f"{FIRST}=p1"), "give the high-quality targets with --high"),
    ("pairs: no low level", lambda f: pairs(f, "--high", f"{FIRST}=p99"), "give at least one low level"),
    (
        "pairs: missing --reference-degraded",
        lambda f: pairs(f, "--high", f"{FIRST}=p99", "--reference-degraded", f"{f}/missing.png"),
        "missing.png' does not exist",
    ),
    (
        "pairs: truncated --reference-degraded",
        lambda f: pairs(f, "--high", f"{FIRST}=p99", "--reference-degraded", f"{f}/truncated.png"),
        "truncated or corrupt",
    ),
    (
        "pairs: a score adapter as --reference-adapter",
        lambda f: pairs(
            f,
            "--high",
            f"{FIRST}=p99",
            "--reference-degraded",
            f"{f}/good.png",
            "--reference-adapter",
            str(TOY.adapter),
        ),
        "needs a reference-based adapter",
    ),
    (
        "pairs: --out is a file",
        lambda f: ["pairs", "--prompt", "x", "--high", f"{FIRST}=p99", "--low", f"{FIRST}=p1", "--out", f"{f}/a_file"],
        "is a file; choose another --out",
    ),
    (
        "pairs: --ssim-blur 5",
        lambda f: pairs(f, "--high", f"{FIRST}=p99", "--low", f"{FIRST}=p1", "--ssim-blur", "5"),
        "argument --ssim-blur: must be a number >= 0 and <= 3, got 5",
    ),
    ("pairs: --min-ssim abc", lambda f: pairs(f, "--min-ssim", "abc"), "argument --min-ssim: must be a number"),
    ("pairs: --seeds 0", lambda f: pairs(f, "--seeds", "0"), "argument --seeds: must be an integer >= 1, got 0"),
    # devices and numbers
    (
        "--device cuda without a GPU",
        lambda f: generate("--quality", "cnniqa=p99", "--device", "cuda"),
        "CUDA is not available",
    ),
    ("--device nonsense", lambda f: generate("--device", "gpu0"), "is not a device"),
    ("--dtype nonsense", lambda f: generate("--dtype", "fp8"), "--dtype must be one of"),
    ("--batch-size 0", lambda f: generate("--batch-size", "0"), "argument --batch-size: must be an integer >= 1"),
    ("--steps -1", lambda f: generate("--steps", "-1"), "argument --steps: must be an integer >= 1, got -1"),
    ("--steps 0", lambda f: generate("--steps", "0"), "argument --steps: must be an integer >= 1"),
    ("--height 0", lambda f: generate("--height", "0"), "argument --height: must be an integer >= 1"),
    (
        "--height not a multiple",
        lambda f: generate("--quality", "cnniqa=p99", "--height", "33"),
        "height must be a multiple of",
    ),
    ("--num-images 0", lambda f: generate("--num-images", "0"), "argument --num-images"),
    ("--seed -1", lambda f: generate("--seed", "-1"), "argument --seed: must be an integer >= 0"),
    ("--scale nan", lambda f: generate("--scale", "nan"), "argument --scale: must be a finite number, got nan"),
    ("--scale -1", lambda f: generate("--scale", "-1"), "argument --scale: must be a number >= 0"),
    (
        "--scale with a bad block",
        lambda f: generate("--scale", '{"up": "abc"}'),
        "argument --scale: scale['up'] must be a finite number, got 'abc'",
    ),
    ("--scale with an unknown part", lambda f: generate("--scale", '{"middle": 1}'), "unknown UNet part"),
    ("--guidance nan", lambda f: generate("--guidance", "nan"), "argument --guidance: must be a finite number"),
    ("--guidance -2", lambda f: generate("--guidance", "-2"), "argument --guidance: must be a number >= 0"),
    ("--negative-quality -1", lambda f: generate("--negative-quality", "-1"), "argument --negative-quality"),
    ("--strength 0", lambda f: generate("--strength", "0"), "argument --strength: must be a number > 0"),
    ("--guidance-window 1,0", lambda f: generate("--guidance-window", "1,0"), "0 <= START < END <= 1"),
    ("--guidance-alpha inf", lambda f: generate("--guidance-alpha", "inf"), "must be a finite number"),
    ("--threads 0", lambda f: generate("--threads", "0"), "argument --threads: must be an integer >= 1"),
    (
        "a second --sweep",
        lambda f: generate("--sweep", "cnniqa=p1,p99", "--sweep", "aesthetic=p1,p99"),
        "--sweep is given twice",
    ),
    (
        "the same --quality twice",
        lambda f: generate("--quality", "cnniqa=p99", "--quality", "cnniqa=p1"),
        "gives 'cnniqa' twice",
    ),
    # targets
    ("target p0", lambda f: generate("--quality", "cnniqa=p0"), "valid percentiles are p1 to p99 (99 table entries"),
    ("target abc", lambda f: generate("--quality", "cnniqa=abc"), "cannot read quality target"),
    ("target that overflows", lambda f: generate("--quality", "cnniqa=1e30"), "adapter's features overflow"),
    ("unknown metric", lambda f: generate("--quality", "topiq=p99"), "conditioned on: cnniqa, aesthetic"),
    (
        "unknown toy adapter",
        lambda f: generate("--adapter", "toy:topiq", "--quality", "cnniqa=p99"),
        "the toy world has no adapter 'topiq'; its adapters: main, reference, loda, cnniqa, aesthetic",
    ),
    (
        "a toy adapter with another --base",
        lambda f: generate("--base", str(f), "--adapter", "toy:cnniqa", "--quality", "cnniqa=p99"),
        "--adapter toy:cnniqa is one of the embedded toy world's adapters, which fit only the toy world's base model",
    ),
    (
        "evaluate: a named toy adapter with another --base",
        lambda f: [
            "evaluate",
            "--base",
            str(f),
            "--adapter",
            "ours=toy:main",
            "--metrics",
            "sharpness",
            "--prompt",
            "x",
            "--out",
            f"{f}/e",
        ],
        "--adapter ours=toy:main is one of the embedded toy world's adapters",
    ),
    # other commands
    (
        "evaluate --seeds 0",
        lambda f: ["evaluate", "--metrics", "sharpness", "--prompt", "x", "--seeds", "0", "--out", f"{f}/e"],
        "argument --seeds: must be an integer >= 1, got 0",
    ),
    (
        "annotate --resize abc",
        lambda f: ["annotate", "--data", str(f), "--metrics", "piqe", "--out", f"{f}/a", "--resize", "abc"],
        "argument --resize: must be an integer",
    ),
    (
        "annotate --workers -1",
        lambda f: ["annotate", "--data", str(f), "--metrics", "piqe", "--out", f"{f}/a", "--workers", "-1"],
        "argument --workers: must be an integer >= 0",
    ),
    (
        "annotate NIQE without params",
        lambda f: [
            "annotate",
            "--data",
            str(f),
            "--metrics",
            "niqe",
            "--out",
            f"{f}/a",
            "--workers",
            "0",
            "--no-progress",
        ],
        "--metric-option niqe.params=FILE",
    ),
    (
        "annotate --through-vae a folder without a VAE",
        lambda f: [
            "annotate",
            "--data",
            str(f),
            "--metrics",
            "piqe",
            "--out",
            f"{f}/a",
            "--through-vae",
            str(f),
            "--workers",
            "0",
            "--no-progress",
        ],
        "cannot load a VAE from",
    ),
    (
        "NIQE params that are not a NIQE file",
        lambda f: [
            "annotate",
            "--data",
            str(f),
            "--metrics",
            "niqe",
            "--out",
            f"{f}/a",
            "--metric-option",
            f"niqe.params={f}/good.png",
        ],
        "good.png is not a NIQE parameter file",
    ),
    (
        "niqe-fit --sharpness-threshold 2",
        lambda f: ["niqe-fit", "--images", str(f), "--out", f"{f}/n.safetensors", "--sharpness-threshold", "2"],
        "must be a number >= 0 and <= 1",
    ),
    (
        "train --learning-rate nan",
        lambda f: [
            "train",
            "--base",
            f"{f}/base",
            "--data",
            str(f),
            "--scores",
            str(f),
            "--metrics",
            "x",
            "--out",
            f"{f}/t",
            "--learning-rate",
            "nan",
        ],
        "argument --learning-rate: must be a finite number",
    ),
    (
        "train --batch-size 0",
        lambda f: [
            "train",
            "--base",
            f"{f}/base",
            "--data",
            str(f),
            "--scores",
            str(f),
            "--metrics",
            "x",
            "--out",
            f"{f}/t",
            "--batch-size",
            "0",
        ],
        "argument --batch-size: must be an integer >= 1",
    ),
]


@pytest.mark.parametrize("argv_for, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gives_one_line_exit_2_and_no_traceback(files, argv_for, expected, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code = main(argv_for(files))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert code == 2, (out, err)
    assert len(lines) == 1 and "error:" in lines[0], err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "--prompt", "x", "--quality", "cnniqa=p99", "--device", "cuda"],
        ["generate", "--prompt", "x", "--steps", "-1"],
    ],
    ids=["error", "usage error"],
)
def test_the_installed_command_exits_2_with_one_line(argv, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "iqa_adapter", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


def test_debug_variable_shows_the_traceback(files, monkeypatch):
    monkeypatch.setenv("IQA_ADAPTER_DEBUG", "1")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        main(["info", "--adapter", str(files / "truncated_adapter")])
