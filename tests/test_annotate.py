import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import iqa_adapter.datasets
from conftest import launch_two_cpu_processes
from iqa_adapter.annotate import JobMismatchError, ScoreTable, annotate
from iqa_adapter.datasets import DatasetError
from iqa_adapter.metrics import QualityMetric, register_metric
from test_datasets import add_member, truncated_jpeg

TESTS_DIR = Path(__file__).parent
SCORED: list[int] = []  # batch sizes scored by the test metrics in this process


# ---------------------------------------------------------------- test metrics (registered once, on import)


@register_metric
class Brightness(QualityMetric):
    """Mean brightness (test metric)."""

    name = "test-brightness"

    def forward(self, images):
        SCORED.append(len(images))
        return images.mean(dim=(1, 2, 3))


@register_metric
class Redness(QualityMetric):
    """Mean red minus mean blue (test metric, lower is better)."""

    name = "test-redness"
    higher_is_better = False

    def forward(self, images):
        return images[:, 0].mean(dim=(1, 2)) - images[:, 2].mean(dim=(1, 2))


@register_metric
class NonFinite(QualityMetric):
    """Brightness, but NaN for dark images and infinite for bright ones (test metric)."""

    name = "test-nonfinite"

    def forward(self, images):
        brightness = images.mean(dim=(1, 2, 3))
        return torch.where(brightness < 0.3, torch.nan, torch.where(brightness > 0.7, torch.inf, brightness))


@register_metric
class SlowBrightness(Brightness):
    """Brightness after a pause of ``delay`` seconds per batch (test metric)."""

    name = "test-slow"

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay

    def forward(self, images):
        time.sleep(self.delay)
        return super().forward(images)


@register_metric
class Picky(Brightness):
    """Brightness, but refuses bright images with a ValueError (test metric)."""

    name = "test-picky"

    def forward(self, images):
        if (images.mean(dim=(1, 2, 3)) > 0.8).any():
            raise ValueError("too bright for this test metric")
        return super().forward(images)


# ---------------------------------------------------------------- data


LEVELS = [0.5, 0.2, 0.6, 0.9, 0.4, 0.55, 0.1, 0.45]  # mean brightness of the test images
NON_FINITE = {f"img{index:02d}": level for index, level in enumerate(LEVELS) if not 0.3 <= level <= 0.7}


def image_bytes(index: int, format="PNG") -> bytes:
    """Image ``index``: noise around LEVELS[index], a size that depends on the index."""
    rng = np.random.default_rng(index)
    height, width = 20 + 3 * index, 30 - index
    pixels = np.clip(LEVELS[index] * 255 + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    pixels[..., 0] = np.clip(pixels[..., 0].astype(int) + 10 * index, 0, 255)  # redness varies too
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def make_folder(root: Path, count: int = len(LEVELS), corrupt: bool = True) -> Path:
    """Images img00.png ... with sidecar captions; with ``corrupt``, three entries that cannot be scored."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (root / f"img{index:02d}.png").write_bytes(image_bytes(index))
        (root / f"img{index:02d}.txt").write_text(f"caption {index}")
    if corrupt:
        (root / "random.jpg").write_bytes(np.random.default_rng(1).bytes(300))
        (root / "truncated.jpg").write_bytes(truncated_jpeg())
        (root / "lonely.txt").write_text("a caption without image")
    return root


def expected_score(index: int, metric: QualityMetric, resize: int | None = 16) -> float:
    """The metric computed directly on image ``index``, decoded with PIL and resized."""
    image = Image.open(io.BytesIO(image_bytes(index))).convert("RGB")
    if resize is not None:
        image = image.resize((resize, resize), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return float(metric(pixels[None])[0])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def chunk_mtimes(out: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (out / "chunks").glob("chunk_*.parquet")}


RUN = dict(batch_size=3, num_workers=0, resize=16, chunk_size=4, progress=False)


# ---------------------------------------------------------------- one job, checked from several sides


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotate")
    data = make_folder(root / "data")
    metrics = ["test-brightness", "test-redness", "test-nonfinite"]
    summary = annotate(str(data), metrics, root / "out", **{**RUN, "num_workers": 2})
    return root / "out", summary


def test_scores_are_the_metrics_of_the_decoded_resized_images(annotated):
    out, summary = annotated
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == [
        "key",
        "caption",
        "width",
        "height",
        "test-brightness",
        "test-redness",
        "test-nonfinite",
    ]
    assert scores["key"].tolist() == [f"img{index:02d}" for index in range(len(LEVELS))]
    assert scores["caption"].tolist() == [f"caption {index}" for index in range(len(LEVELS))]
    assert scores["width"].tolist() == [30 - index for index in range(len(LEVELS))]
    assert scores["height"].tolist() == [20 + 3 * index for index in range(len(LEVELS))]
    for metric in (Brightness(), Redness(), NonFinite()):
        expected = [expected_score(index, metric) for index in range(len(LEVELS))]
        np.testing.assert_allclose(scores[metric.name], expected, rtol=1e-6, atol=1e-7)
    assert (summary.scored, summary.skipped) == (len(LEVELS), 3)


def test_unreadable_entries_and_non_finite_scores_are_reported(annotated):
    out, summary = annotated
    reasons = {row["key"]: row["reason"] for row in read_csv(out / "skipped.csv")}
    assert set(reasons) == {"random", "truncated", "lonely", *NON_FINITE}
    assert reasons["random"].startswith("cannot decode image")
    assert "truncated" in reasons["truncated"]
    assert "without an image" in reasons["lonely"]
    for key, level in NON_FINITE.items():
        assert reasons[key].startswith(f"test-nonfinite score is {'nan' if level < 0.3 else 'inf'}")
    assert summary.invalid_scores == {"test-brightness": 0, "test-redness": 0, "test-nonfinite": len(NON_FINITE)}


def test_statistics_of_the_finite_scores(annotated):
    out, _ = annotated
    scores = pd.read_parquet(out / "scores.parquet")
    rows = {row["metric"]: row for row in read_csv(out / "stats.csv")}
    assert list(rows) == ["test-brightness", "test-redness", "test-nonfinite"]
    for name, row in rows.items():
        values = scores[name].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        assert len(values) == len(LEVELS) - (len(NON_FINITE) if name == "test-nonfinite" else 0)
        by_hand = {
            "min_val": values.min(),
            "max_val": values.max(),
            "mean_val": values.mean(),
            "std_val": np.sqrt(((values - values.mean()) ** 2).mean()),
            "quantile_50": np.median(values),
            "quantile_25": np.percentile(values, 25),
        }
        for column, value in by_hand.items():
            assert float(row[column]) == pytest.approx(value, rel=1e-6), (name, column)
    assert rows["test-redness"]["higher_is_better"] == "false"


def test_score_table_looks_up_by_key(annotated):
    out, _ = annotated
    table = ScoreTable.load(out)
    scores = pd.read_parquet(out / "scores.parquet").set_index("key")
    assert table.metrics == ("test-brightness", "test-redness", "test-nonfinite")
    assert len(table) == len(scores) and "img03" in table and "random" not in table
    assert table["img04"] == pytest.approx(scores.loc["img04", list(table.metrics)].to_dict())
    np.testing.assert_array_equal(table.vector("img05"), scores.loc["img05", list(table.metrics)].to_numpy(np.float32))
    with pytest.raises(KeyError):
        table["random"]
    with pytest.raises(ValueError, match="unique"):
        ScoreTable(["a", "a"], ["m"], np.zeros((2, 1)))


# ---------------------------------------------------------------- single-process behaviour


def test_each_image_is_decoded_once(tmp_path, monkeypatch):
    decoded = []
    original = iqa_adapter.datasets.decode_image
    monkeypatch.setattr(
        iqa_adapter.datasets, "decode_image", lambda data, *rest: decoded.append(data) or original(data, *rest)
    )
    annotate(
        str(make_folder(tmp_path / "data")),
        ["test-brightness", "test-redness", "test-nonfinite"],
        tmp_path / "out",
        **RUN,
    )
    assert len(decoded) == len(LEVELS) + 2  # every image file once, the two corrupt ones included
    assert len(set(decoded)) == len(decoded)


def test_native_size_scores_each_image_at_its_size(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for index in (0, 1):  # two sizes, twice each, in one batch
        (data / f"a{index}.png").write_bytes(image_bytes(index))
        (data / f"b{index}.png").write_bytes(image_bytes(index))
    SCORED.clear()
    annotate(str(data), ["test-brightness"], tmp_path / "out", **{**RUN, "resize": None, "batch_size": 4})
    assert SCORED == [2, 2]  # one call per size
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet").set_index("key")["test-brightness"]
    for index in (0, 1):
        expected = expected_score(index, Brightness(), resize=None)
        assert scores[f"a{index}"] == pytest.approx(expected, rel=1e-6)
        assert scores[f"b{index}"] == pytest.approx(expected, rel=1e-6)


def test_images_a_metric_cannot_score_are_skipped_and_listed(tmp_path):
    """--resize none with an image smaller than PIQE's 16x16 block: listed, never fatal."""
    data = make_folder(tmp_path / "data", count=3, corrupt=False)
    Image.new("RGB", (10, 12), (90, 90, 90)).save(data / "tiny.png")
    (data / "tiny.txt").write_text("a tiny image")
    summary = annotate(
        str(data), ["piqe", "test-brightness"], tmp_path / "out", **{**RUN, "resize": None, "batch_size": 4}
    )
    assert (summary.scored, summary.skipped) == (3, 1)
    skipped = {row["key"]: row["reason"] for row in read_csv(tmp_path / "out" / "skipped.csv")}
    assert skipped == {"tiny": "image of 10x12 pixels (after --resize) is smaller than the 16x16 that piqe needs"}


def test_a_value_error_on_one_image_skips_only_that_image(tmp_path):
    data = make_folder(tmp_path / "data", count=4, corrupt=False)
    annotate(str(data), ["test-picky"], tmp_path / "out", **{**RUN, "batch_size": 4})
    skipped = {row["key"]: row["reason"] for row in read_csv(tmp_path / "out" / "skipped.csv")}
    assert skipped == {"img03": "test-picky cannot score it: too bright for this test metric"}
    assert len(pd.read_parquet(tmp_path / "out" / "scores.parquet")) == 3


def test_images_over_the_pixel_limit_are_listed_unread(tmp_path):
    data = make_folder(tmp_path / "data", count=2, corrupt=False)
    summary = annotate(str(data), ["test-brightness"], tmp_path / "out", **{**RUN, "max_pixels": 650})
    skipped = {row["key"]: row["reason"] for row in read_csv(tmp_path / "out" / "skipped.csv")}
    assert summary.scored == 1 and list(skipped) == ["img01"]  # 20 x 30 pixels pass, 23 x 29 do not
    assert "has 29x23 = 667 pixels, more than the limit of 650; raise the limit (--max-pixels)" in skipped["img01"]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(data / "deep.png")
    assert Image.open(data / "deep.png").mode == "I;16"
    annotate(str(data), ["test-brightness"], tmp_path / "out", **{**RUN, "resize": None})
    score = pd.read_parquet(tmp_path / "out" / "scores.parquet")["test-brightness"][0]
    assert score == pytest.approx(ramp.mean() / 65535, rel=1e-6)  # PIL's convert("RGB") gives 0.996: all > 255 is 255


def test_the_official_resize_is_an_option(tmp_path):
    """--resize-mode tensor-bilinear: bilinear interpolation of the float tensor, no antialiasing."""
    data = make_folder(tmp_path / "data", count=2, corrupt=False)
    annotate(str(data), ["test-redness"], tmp_path / "out", **{**RUN, "resize_mode": "tensor-bilinear"})
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet").set_index("key")["test-redness"]
    for index in range(2):
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(image_bytes(index))).convert("RGB")))
        pixels = pixels.permute(2, 0, 1)[None].float() / 255
        resized = torch.nn.functional.interpolate(pixels, size=(16, 16), mode="bilinear", align_corners=False)
        expected = float(resized[0, 0].mean() - resized[0, 2].mean())
        assert scores[f"img{index:02d}"] == pytest.approx(expected, rel=1e-5)
        assert scores[f"img{index:02d}"] != pytest.approx(expected_score(index, Redness()), rel=1e-5)  # not PIL's
    assert json.loads((tmp_path / "out" / "job.json").read_text())["resize_mode"] == "tensor-bilinear"
    with pytest.raises(JobMismatchError, match="resize_mode: 'tensor-bilinear' -> None"):  # a default is a change too
        annotate(str(data), ["test-redness"], tmp_path / "out", **RUN)


def test_folder_shards_and_parquet_give_the_same_scores(tmp_path):
    folder = make_folder(tmp_path / "folder", count=5, corrupt=False)
    (tmp_path / "shards").mkdir()
    for shard, indices in enumerate([(0, 1, 2), (3, 4)]):
        with tarfile.open(tmp_path / "shards" / f"{shard:05d}.tar", "w") as tar:
            for index in indices:
                add_member(tar, f"img{index:02d}.png", image_bytes(index))
                add_member(tar, f"img{index:02d}.txt", f"caption {index}".encode())
    pq.write_table(
        pa.table(
            {
                "key": [f"img{index:02d}" for index in range(5)],
                "image": [{"bytes": image_bytes(index), "path": None} for index in range(5)],
                "caption": [f"caption {index}" for index in range(5)],
            }
        ),
        tmp_path / "data.parquet",
    )

    results = {}
    for name, data in [
        ("folder", str(folder)),
        ("shards", f"{tmp_path}/shards/{{00000..00001}}.tar"),
        ("parquet", str(tmp_path / "data.parquet")),
    ]:
        annotate(data, ["test-brightness", "test-redness"], tmp_path / f"out-{name}", **RUN)
        results[name] = pd.read_parquet(tmp_path / f"out-{name}" / "scores.parquet")
    pd.testing.assert_frame_equal(results["shards"], results["folder"])
    pd.testing.assert_frame_equal(results["parquet"], results["folder"])


def test_duplicate_keys_keep_the_first_and_are_reported(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(0))
    (tmp_path / "b.png").write_bytes(image_bytes(2))
    rows = [{"key": "k", "file": "a.png"}, {"key": "j", "file": "b.png"}, {"key": "k", "file": "b.png"}]
    (tmp_path / "list.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = annotate(
        str(tmp_path / "list.jsonl"), ["test-brightness"], tmp_path / "out", **{**RUN, "chunk_size": 2}
    )  # the duplicate is in another chunk
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert scores["key"].tolist() == ["k", "j"]
    assert scores["test-brightness"][0] == pytest.approx(expected_score(0, Brightness()), rel=1e-6)
    skipped = read_csv(tmp_path / "out" / "skipped.csv")
    assert [(row["key"], row["source"]) for row in skipped] == [("k", str(tmp_path / "b.png"))]
    assert skipped[0]["reason"].startswith("duplicate key")
    assert summary.skipped == 1


def test_restart_skips_finished_work_and_refuses_changed_parameters(tmp_path):
    data, out = str(make_folder(tmp_path / "data")), tmp_path / "out"
    annotate(data, ["test-brightness"], out, **RUN)
    mtimes = chunk_mtimes(out)
    assert len(mtimes) == 3  # 11 entries in chunks of 4

    SCORED.clear()
    annotate(data, ["test-brightness"], out, **{**RUN, "batch_size": 1, "num_workers": 1})  # nothing left to do
    assert SCORED == [] and chunk_mtimes(out) == mtimes

    for changed in [
        {"metrics": ["test-brightness", "test-redness"]},
        {"resize": 32},
        {"chunk_size": 5},
        {"data": str(tmp_path)},
        {"metric_options": {"test-brightness": {}}},
    ]:
        arguments = {"data": data, "metrics": ["test-brightness"], "out_dir": out, **RUN, **changed}
        with pytest.raises(JobMismatchError, match=f"{next(iter(changed))}: .*choose a new output folder"):
            annotate(**arguments)
    assert chunk_mtimes(out) == mtimes


def test_arguments_and_empty_datasets_are_checked(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        annotate(str(tmp_path / "empty"), ["test-brightness"], tmp_path / "out", **RUN)
    with pytest.raises(ValueError, match="listed twice"):
        annotate(str(tmp_path), ["test-brightness", "test-brightness"], tmp_path / "out2", **RUN)
    with pytest.raises(ValueError, match="not scored"):
        annotate(str(tmp_path), ["test-brightness"], tmp_path / "out2", **RUN, metric_options={"test-slow": {}})


def test_score_columns_can_be_renamed(tmp_path):
    data = str(make_folder(tmp_path / "data", corrupt=False))
    annotate(data, ["light=test-brightness", "test-redness"], tmp_path / "out", **RUN, metric_options={"light": {}})
    scores = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert list(scores.columns) == ["key", "caption", "width", "height", "light", "test-redness"]
    expected = [expected_score(index, Brightness()) for index in range(len(LEVELS))]
    np.testing.assert_allclose(scores["light"], expected, rtol=1e-6)
    assert [row["metric"] for row in read_csv(tmp_path / "out" / "stats.csv")] == ["light", "test-redness"]
    with pytest.raises(ValueError, match="COLUMN=NAME"):
        annotate(data, ["=test-brightness"], tmp_path / "out2", **RUN)
    with pytest.raises(ValueError, match="listed twice"):
        annotate(data, ["x=test-brightness", "x=test-redness"], tmp_path / "out2", **RUN)


# ---------------------------------------------------------------- kill -9 and several processes


SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import test_annotate  # registers the test metrics
from accelerate import PartialState
from iqa_adapter.annotate import annotate

arguments = json.loads(sys.argv[1])
annotate(**arguments)
scored = sum(test_annotate.SCORED)
json.dump(scored, open(arguments["out_dir"] + f"/scored_{{PartialState().process_index}}.json", "w"))
"""


def write_script(tmp_path: Path) -> Path:
    script = tmp_path / "run_annotate.py"
    script.write_text(SCRIPT.format(tests=str(TESTS_DIR)))
    return script


def test_resume_after_kill_loses_and_repeats_nothing(tmp_path):
    data, out = str(make_folder(tmp_path / "data", corrupt=False)), tmp_path / "out"
    arguments = {
        "data": data,
        "metrics": ["test-slow"],
        "out_dir": str(out),
        **RUN,
        "chunk_size": 2,
        "batch_size": 2,
        "num_workers": 1,
        "metric_options": {"test-slow": {"delay": 0.5}},
    }
    process = subprocess.Popen(
        [sys.executable, str(write_script(tmp_path)), json.dumps(arguments)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not chunk_mtimes(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the job and its loader worker
    process.wait()
    done = chunk_mtimes(out)
    assert 1 <= len(done) < 4, process.stderr.read().decode()[-2000:]
    assert not (out / "scores.parquet").exists()

    SCORED.clear()
    annotate(**arguments)
    assert {name: mtime for name, mtime in chunk_mtimes(out).items() if name in done} == done
    assert sum(SCORED) == len(LEVELS) - 2 * len(done)  # only the unfinished chunks were scored
    scores = pd.read_parquet(out / "scores.parquet")
    assert scores["key"].tolist() == [f"img{index:02d}" for index in range(len(LEVELS))]
    expected = [expected_score(index, Brightness()) for index in range(len(LEVELS))]
    np.testing.assert_allclose(scores["test-slow"], expected, rtol=1e-6)
    assert read_csv(out / "skipped.csv") == []


def test_two_processes_give_the_result_of_one(tmp_path):
    data = str(make_folder(tmp_path / "data"))
    arguments = {"data": data, "metrics": ["test-brightness", "test-nonfinite"], **RUN, "chunk_size": 2}
    annotate(out_dir=tmp_path / "single", **arguments)

    finished = launch_two_cpu_processes(
        [str(write_script(tmp_path)), json.dumps({**arguments, "out_dir": str(tmp_path / "multi")})], timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]

    single, multi = tmp_path / "single", tmp_path / "multi"
    pd.testing.assert_frame_equal(pd.read_parquet(multi / "scores.parquet"), pd.read_parquet(single / "scores.parquet"))
    assert read_csv(multi / "skipped.csv") == read_csv(single / "skipped.csv")
    assert read_csv(multi / "stats.csv") == read_csv(single / "stats.csv")
    scored = [json.loads((multi / f"scored_{rank}.json").read_text()) for rank in (0, 1)]
    assert min(scored) > 0 and sum(scored) == len(LEVELS)  # both processes worked, no image twice


def test_through_vae_scores_each_image_as_the_vae_reproduces_it(tmp_path):
    """The toy world's base model (a real diffusers pipeline folder, VAE factor 2): the scores are the metric of the
    VAE's round trip, computed here independently; noise the VAE erases no longer counts; an image whose sides the
    VAE cannot take is skipped with the reason; the VAE is part of the job's parameters."""
    from diffusers import AutoencoderKL

    from iqa_adapter.toy.world import shipped_world

    base = shipped_world().base
    data = make_folder(tmp_path / "data", count=3, corrupt=False)  # noisy images (noise sd 20 of 255)
    run = {**RUN, "resize": None}  # native sizes: 20x30, 23x29 (odd: skipped with the VAE), 26x28
    Image.new("RGB", (17, 16), (120, 60, 30)).save(data / "odd.png")
    annotate(str(data), ["test-redness", "noise=test-brightness"], tmp_path / "plain", **{**run, "resize": 16})
    annotate(str(data), ["test-redness", "noise=test-brightness"], tmp_path / "vae", **run, through_vae=str(base))
    scores = pd.read_parquet(tmp_path / "vae" / "scores.parquet").set_index("key")
    vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae").eval()
    for index in range(3):
        image = Image.open(io.BytesIO(image_bytes(index))).convert("RGB")
        height, width = image.height // 2 * 2, image.width // 2 * 2
        if (height, width) != (image.height, image.width):
            continue  # skipped below
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            trip = ((vae.decode(vae.encode(pixels * 2 - 1).latent_dist.mean).sample + 1) / 2).clamp(0, 1)
        assert scores.loc[f"img{index:02d}", "test-redness"] == pytest.approx(float(Redness()(trip)[0]), abs=1e-5)
        assert (trip - pixels).abs().mean() > 0.02  # the round trip is not the image: the VAE smooths the noise
    skipped = pd.read_csv(tmp_path / "vae" / "skipped.csv").set_index("key")
    assert "multiples of 2" in skipped.loc["odd", "reason"] and "multiples of 2" in skipped.loc["img01", "reason"]
    assert "odd" in pd.read_parquet(tmp_path / "plain" / "scores.parquet")["key"].tolist()  # scored without the VAE
    assert json.loads((tmp_path / "vae" / "job.json").read_text())["through_vae"] == str(base)
    with pytest.raises(JobMismatchError, match="through_vae"):
        annotate(str(data), ["test-redness", "noise=test-brightness"], tmp_path / "vae", **run)
    # the VAE folder itself loads too; a folder without a VAE is a clear error
    annotate(str(data), ["test-redness"], tmp_path / "vae_folder", **run, through_vae=str(base / "vae"))
    assert (
        pd.read_parquet(tmp_path / "vae_folder" / "scores.parquet")
        .set_index("key")["test-redness"]
        .dropna()
        .equals(scores["test-redness"].dropna())
    )
    with pytest.raises(ValueError, match="cannot load a VAE from"):
        annotate(str(data), ["test-redness"], tmp_path / "none", **run, through_vae=str(tmp_path / "data"))
