import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from iqa_adapter.datasets import (
    DatasetError,
    FolderReader,
    ListingReader,
    MissingImageError,
    ParquetReader,
    ShardReader,
    expand_braces,
    load_image,
    open_dataset,
)


def encoded_image(seed: int, size=(24, 16), format="PNG") -> bytes:
    """A random RGB image (width, height) = ``size``, encoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = encoded_image(99, size=(64, 64), format="JPEG")
    return data[: len(data) // 2]


def listed(reader) -> list[tuple[str, str]]:
    return [(sample.key, sample.caption) for sample in reader]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples: dict[str, tuple[bytes | None, str]]) -> None:
    """A webdataset shard as img2dataset writes it: KEY.jpg, KEY.txt, KEY.json per sample."""
    with tarfile.open(path, "w") as tar:
        for key, (image, caption) in samples.items():
            if image is not None:
                add_member(tar, f"{key}.jpg", image)
            add_member(tar, f"{key}.txt", caption.encode())
            add_member(tar, f"{key}.json", json.dumps({"key": key}).encode())


def test_folder_with_sidecar_captions(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(encoded_image(0))
    (tmp_path / "a.txt").write_text("a red cat\n")
    (tmp_path / "sub" / "b.jpg").write_bytes(encoded_image(1, format="JPEG"))
    (tmp_path / "sub" / "b.txt").write_text("a dog")
    (tmp_path / "c.webp").write_bytes(encoded_image(2, format="WEBP"))  # no caption file
    (tmp_path / "orphan.txt").write_text("a caption without image")

    reader = open_dataset(str(tmp_path))
    assert isinstance(reader, FolderReader)
    samples = {sample.key: sample for sample in reader}
    assert [(key, sample.caption) for key, sample in samples.items()] == [
        ("a", "a red cat"),
        ("c", ""),
        ("orphan", "a caption without image"),
        ("sub/b", "a dog"),
    ]
    assert samples["a"].read() == (tmp_path / "a.png").read_bytes()
    assert samples["sub/b"].source == str(tmp_path / "sub" / "b.jpg")
    with pytest.raises(MissingImageError, match="without an image"):
        samples["orphan"].read()


@pytest.mark.parametrize("listing", ["captions.jsonl", "captions.csv", "other.csv"])
def test_listing_files(tmp_path, listing):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x.png").write_bytes(encoded_image(3))
    (tmp_path / "img" / "y.png").write_bytes(encoded_image(4))
    rows = [{"file": "img/x.png", "caption": "first, with a comma"}, {"file": "img/y.png", "caption": "second"}]
    path = tmp_path / listing
    if listing.endswith(".jsonl"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text('file,caption\nimg/x.png,"first, with a comma"\nimg/y.png,second\n')

    # a listing named captions.* is found in its folder; any other is given directly
    reader = open_dataset(str(tmp_path if listing.startswith("captions") else path))
    assert isinstance(reader, ListingReader)
    samples = list(reader)
    assert listed(samples) == [("img/x", "first, with a comma"), ("img/y", "second")]
    assert samples[1].read() == (tmp_path / "img" / "y.png").read_bytes()


def test_listing_with_keys_and_missing_files(tmp_path):
    (tmp_path / "x.png").write_bytes(encoded_image(3))
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"key": 7, "image_path": "x.png", "text": "t"})
        + "\n"
        + json.dumps({"key": 8, "image_path": "gone.png", "text": "u"})
        + "\n"
    )
    samples = list(open_dataset(str(tmp_path / "list.jsonl")))
    assert listed(samples) == [("7", "t"), ("8", "u")]
    with pytest.raises(FileNotFoundError):
        samples[1].read()


def test_listing_errors_name_the_problem(tmp_path):
    (tmp_path / "list.jsonl").write_text(json.dumps({"url": "http://x", "caption": "c"}) + "\n")
    with pytest.raises(DatasetError, match="no image file column.*found url, caption"):
        list(open_dataset(str(tmp_path / "list.jsonl")))
    (tmp_path / "broken.jsonl").write_text(json.dumps({"file": "a.png"}) + "\n{not json\n")
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        list(open_dataset(str(tmp_path / "broken.jsonl")))
    (tmp_path / "gap.csv").write_text("file,caption\na.png,first\n,second\n")
    with pytest.raises(DatasetError, match="row 2 has no 'file'"):
        list(open_dataset(str(tmp_path / "gap.csv")))


def test_expand_braces_keeps_zero_padding():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}{1..2}") == ["a1", "a2", "b1", "b2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_shards(tmp_path):
    keys = ["000000000", "000000001", "000000002"]
    images = {key: encoded_image(seed, format="JPEG") for seed, key in enumerate(keys)}
    write_shard(
        tmp_path / "00000.tar", {"000000000": (images["000000000"], "zero"), "000000001": (images["000000001"], "one")}
    )
    write_shard(tmp_path / "00001.tar", {"000000002": (images["000000002"], "two"), "000000003": (None, "no image")})
    expected = [("000000000", "zero"), ("000000001", "one"), ("000000002", "two"), ("000000003", "no image")]

    for data in [f"{tmp_path}/{{00000..00001}}.tar", f"{tmp_path}/*.tar", str(tmp_path)]:
        reader = open_dataset(data)
        assert isinstance(reader, ShardReader)
        assert listed(reader) == expected
    samples = list(open_dataset(f"{tmp_path}/{{00000..00001}}.tar"))
    assert [sample.read() for sample in samples[:3]] == list(images.values())
    assert samples[2].source == f"{tmp_path / '00001.tar'}:000000002.jpg"
    with pytest.raises(MissingImageError, match="no image in this sample"):
        samples[3].read()
    with pytest.raises(DatasetError, match="1 path.*00002.tar"):
        open_dataset(f"{tmp_path}/{{00000..00002}}.tar")


def test_truncated_and_unreadable_shards_are_listed(tmp_path):
    write_shard(tmp_path / "00000.tar", {"k0": (encoded_image(0), "zero"), "k1": (encoded_image(1), "one")})
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: data.index(b"IEND", data.index(b"k1.jpg"))])  # cut inside k1.jpg
    (tmp_path / "00001.tar").write_bytes(b"not a tar file")

    samples = list(open_dataset(str(tmp_path)))
    # what comes before the cut is read; the rest of a shard is one entry named after the shard
    assert [sample.key for sample in samples] == ["k0", "00000.tar", "00001.tar"]
    assert load_image(samples[0], None).reason is None
    assert "unreadable tar shard: unexpected end of data" in load_image(samples[1], None).reason
    assert "unreadable tar shard" in load_image(samples[2], None).reason


def test_parquet_with_bytes(tmp_path):
    images = [encoded_image(seed) for seed in range(3)]
    pq.write_table(pa.table({"jpg": images[:2], "caption": ["a", None]}), tmp_path / "0.parquet")
    # Hugging Face datasets store images as a struct {bytes, path}; small row groups are read one by one
    hf = pa.table(
        {"image": [{"bytes": images[2], "path": "c.png"}, {"bytes": None, "path": "d.png"}], "text": ["c", "d"]}
    )
    pq.write_table(hf, tmp_path / "1.parquet", row_group_size=1)

    reader = open_dataset(f"{tmp_path}/*.parquet")
    assert isinstance(reader, ParquetReader)
    samples = list(reader)
    assert listed(samples) == [("0", "a"), ("1", ""), ("2", "c"), ("3", "d")]  # keys: row index over the files
    assert [sample.read() for sample in samples[:3]] == images
    assert samples[2].source == f"{tmp_path / '1.parquet'}:row 2"
    with pytest.raises(MissingImageError, match="no image bytes"):
        samples[3].read()


def test_parquet_with_paths_and_keys(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(encoded_image(5))
    pq.write_table(pa.table({"key": ["k-5"], "path": ["img/p.png"], "txt": ["five"]}), tmp_path / "meta.parquet")
    samples = list(open_dataset(str(tmp_path / "meta.parquet")))
    assert listed(samples) == [("k-5", "five")]
    assert samples[0].read() == (tmp_path / "img" / "p.png").read_bytes()


def test_parquet_without_image_column_lists_the_columns(tmp_path):
    # img2dataset's own parquet output holds metadata, not images
    pq.write_table(pa.table({"url": ["http://x"], "caption": ["c"], "status": ["success"]}), tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match="no image column.*found columns: url, caption, status"):
        open_dataset(str(tmp_path / "m.parquet"))


def test_unknown_inputs_are_refused(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(DatasetError, match="cannot tell the dataset format.*\\.md"):
        open_dataset(str(tmp_path / "notes.md"))
    with pytest.raises(DatasetError, match="do not exist"):
        open_dataset(str(tmp_path / "missing"))


def test_load_image_decodes_resizes_and_reports_corrupt_files(tmp_path):
    (tmp_path / "good.png").write_bytes(encoded_image(7, size=(40, 30)))
    (tmp_path / "random.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "truncated.jpg").write_bytes(truncated_jpeg())
    samples = {sample.key: sample for sample in FolderReader(tmp_path)}

    decoded = load_image(samples["good"], 16)
    expected = Image.open(tmp_path / "good.png").convert("RGB").resize((16, 16), Image.Resampling.BICUBIC)
    assert (decoded.width, decoded.height, decoded.reason) == (40, 30, None)
    assert decoded.image.dtype == torch.uint8
    assert torch.equal(decoded.image, torch.from_numpy(np.array(expected)).permute(2, 0, 1))
    assert tuple(load_image(samples["good"], None).image.shape) == (3, 30, 40)

    for key, reason in [("random", "not an image"), ("truncated", "truncated")]:
        failed = load_image(samples[key], 16)
        assert failed.image is None and failed.width is None
        assert failed.reason.startswith("cannot decode image") and reason in failed.reason
