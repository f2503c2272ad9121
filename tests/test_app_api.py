"""The generate tab's API on a real `iqa-adapter app` server, on the embedded toy world."""

from __future__ import annotations

import base64
import io
import urllib.request

import pytest

pytest.importorskip("starlette", reason="the web app needs its extra: pip install 'iqa-adapter[app]'")
pytest.importorskip("uvicorn", reason="the web app needs its extra: pip install 'iqa-adapter[app]'")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from app_fixtures import AppServer  # noqa: E402
from iqa_adapter import IQAAdapter  # noqa: E402
from iqa_adapter.generation import generate  # noqa: E402
from iqa_adapter.pipelines import load_pipeline  # noqa: E402
from iqa_adapter.toy.world import shipped_world  # noqa: E402

# the shipped adapter's two metrics, whatever the embedded world conditions on
FIRST, SECOND = (stats.name for stats in IQAAdapter.from_pretrained(shipped_world().adapter).config.metrics)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = AppServer(["--threads", "1"], tmp_path_factory.mktemp("app")).start()
    yield app
    app.stop()


def finished(server, job):
    import time

    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
        job = server.get(f"/api/jobs/{job['id']}")
    return job


def png(server, url) -> bytes:
    with urllib.request.urlopen(server.url + url, timeout=30) as response:
        return response.read()


def test_the_model_endpoint_gives_z_and_raw_values_of_every_slider(server):
    info = server.get("/api/model")
    adapter = IQAAdapter.from_pretrained(shipped_world().adapter)
    assert info["toy"] and info["condition"] == "scores" and info["defaults"]["scale"] == adapter.config.default_scale
    assert (info["base"], info["adapter"]) == ("toy", "toy:main")  # names, not folders inside site-packages
    assert [metric["name"] for metric in info["metrics"]] == [stats.name for stats in adapter.config.metrics]
    for metric, stats in zip(info["metrics"], adapter.config.metrics):
        rows = {row["percentile"]: row for row in metric["table"]}
        assert set(rows) == set(range(1, 100))
        assert rows[99]["raw"] == pytest.approx(stats.raw_from_percentile(99))
        assert rows[99]["z"] == pytest.approx(stats.z_from_percentile(99))
        assert rows[7]["raw"] == pytest.approx(stats.raw_from_percentile(7))
        # p99 is better than p1 whichever way the metric points
        assert (rows[99]["raw"] > rows[1]["raw"]) == stats.higher_is_better


def test_an_image_from_the_app_is_the_image_of_the_python_api(server):
    request = {
        "prompt": "a red circle on a blue background",
        "qualities": {FIRST: 90, SECOND: 20},
        "scale": 0.8,
        "seed": 3,
        "steps": 6,
        "guidance": 3.0,
        "negative_quality": 1.0,
    }
    status, job = server.post("/api/generate", request)
    assert status == 200 and job["state"] in ("queued", "running", "done")
    job = finished(server, job)
    assert job["state"] == "done", job["error"]
    assert job["step"] == job["total_steps"] == 6 and len(job["images"]) == 1
    sidecar = server.get(job["images"][0]["sidecar"])
    assert sidecar["prompt"] == request["prompt"] and sidecar["quality"] == {FIRST: "p90", SECOND: "p20"}
    assert sidecar["negative_quality"] == 1.0 and sidecar["scale"] == 0.8 and sidecar["seed"] == 3

    torch.set_num_threads(1)
    world = shipped_world()
    pipe = load_pipeline(str(world.base), "cpu", torch.float32)
    pipe.set_progress_bar_config(disable=True)
    expected = generate(
        pipe,
        IQAAdapter.from_pretrained(world.adapter),
        request["prompt"],
        [{FIRST: "p90", SECOND: "p20"}],
        scale=0.8,
        seed=3,
        steps=6,
        guidance=3.0,
        negative_quality=1.0,
        progress=False,
    )[0].image
    served = Image.open(io.BytesIO(png(server, job["images"][0]["url"])))
    assert served.size == expected.size and served.tobytes() == expected.convert(served.mode).tobytes()


def test_a_sweep_is_a_labelled_row_over_one_metric(server):
    status, job = server.post("/api/generate", {"prompt": "a green square", "sweep": FIRST, "steps": 3})
    job = finished(server, job)
    assert status == 200 and job["state"] == "done"
    labels = [image["label"] for image in job["images"]]
    assert labels == [f"{FIRST} p{p}" for p in (1, 10, 25, 50, 75, 90, 99)]
    sidecars = [server.get(image["sidecar"]) for image in job["images"]]
    assert [s["quality"][FIRST] for s in sidecars] == [f"p{p}" for p in (1, 10, 25, 50, 75, 90, 99)]
    assert {s["quality"][SECOND] for s in sidecars} == {"p99"} and {s["seed"] for s in sidecars} == {0}
    images = [png(server, image["url"]) for image in job["images"]]
    assert len(set(images)) == 7  # the quality changes the image


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({"prompt": " "}, "prompt: give a non-empty text"),
        ({"prompt": "x", "steps": 0}, "steps must be an integer >= 1"),
        ({"prompt": "x", "scale": -1}, "scale must be"),
        ({"prompt": "x", "qualities": {FIRST: 100}}, f"qualities.{FIRST} must be an integer >= 1 and <= 99"),
        (
            {"prompt": "x", "qualities": {"sharpness": 50}},
            rf"a percentile for each of the adapter's metrics \['{FIRST}', '{SECOND}'\]",
        ),
        ({"prompt": "x", "sweep": "colour"}, "sweep: one of the adapter's metrics"),
        ({"prompt": "x", "seed": "one"}, "seed must be an integer"),
        ({"prompt": "x", "seed": 2**70}, "seed must be an integer >= 0 and <= 9223372036854775807"),
        ({"prompt": "x", "guidance": float("nan")}, "guidance must be"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(server, request_body, message):
    import re

    status, body = server.post("/api/generate", request_body)
    assert status == 400 and re.search(message, body["error"]), body


def test_unknown_jobs_and_a_body_that_is_not_json_get_one_line_errors(server):
    request = urllib.request.Request(server.url + "/api/generate", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 400 and b"send the request as a JSON object" in error.value.read()
    with pytest.raises(urllib.error.HTTPError) as error:
        server.get("/api/jobs/job999")
    assert error.value.code == 404


def test_a_reference_based_adapter_takes_an_uploaded_reference(tmp_path):
    app = AppServer(["--threads", "1", "--adapter", "toy:reference"], tmp_path).start()
    try:
        info = app.get("/api/model")
        assert info["condition"] == "reference" and info["adapter"] == "toy:reference"
        status, body = app.post("/api/generate", {"prompt": "a red circle"})
        assert status == 400 and "upload a reference image" in body["error"]
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
        reference = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        status, job = app.post("/api/generate", {"prompt": "a red circle", "reference": reference, "steps": 3})
        job = finished(app, job)
        assert status == 200 and job["state"] == "done" and job["images"][0]["label"] == "reference"
        assert Image.open(io.BytesIO(png(app, job["images"][0]["url"]))).size == (32, 32)
        status, body = app.post("/api/generate", {"prompt": "x", "reference": "data:image/png;base64,AAAA"})
        assert status == 400 and body["error"].startswith("reference:")
    finally:
        app.stop()


def test_study_requests_that_cannot_be_served_get_one_line_errors(tmp_path):
    from app_fixtures import condition_folders
    from iqa_adapter.app.store import StudySettings, StudyStore
    from iqa_adapter.app.study import create_study

    database = str(tmp_path / "study.sqlite")
    root = condition_folders(tmp_path / "eval", ["base", "toy/p99"], 2)
    create_study(StudyStore(database), "s", root, StudySettings(conditions=("base", "toy/p99")), attention_pairs=1)
    app = AppServer(["--no-generate", "--database", database], tmp_path).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as error:
            app.get("/api/study/nope/next?participant=a")
        assert error.value.code == 404 and b"no study named 'nope'" in error.value.read()
        status, body = app.post("/api/study/nope/vote", {"participant": "a", "assignment": 1, "choice": "left"})
        assert status == 404
        first = app.get("/api/study/s/next?participant=a")
        for assignment in (2**70, -1, "x"):
            status, body = app.post(
                "/api/study/s/vote", {"participant": "a", "assignment": assignment, "choice": "left"}
            )
            assert status == 400 and "assignment" in body["error"]
        status, body = app.post(
            "/api/study/s/vote", {"participant": "a", "assignment": first["assignment"], "choice": "up"}
        )
        assert status == 400 and "one of left, right, same" in body["error"]
        status, body = app.post(
            "/api/study/s/vote", {"participant": "", "assignment": first["assignment"], "choice": "left"}
        )
        assert status == 400 and "participant id must be 1 to 200 characters" in body["error"]
        with pytest.raises(urllib.error.HTTPError) as error:
            app.get("/api/model")  # no generator on this server
        assert error.value.code == 404 and b"no generator" in error.value.read()
    finally:
        app.stop()


def test_results_links_are_url_encoded_and_html_escaped():
    from iqa_adapter.app.server import results_html

    report = {
        "study": "a b&c<",
        "conditions": ["x", "y"],
        "win_rate": {"x": 1.0, "y": 0.0},
        "vote_share": {"x": 1.0, "y": 0.0},
        "pairwise": {"x": {"y": 1.0}, "y": {"x": 0.0}},
        "bradley_terry": {},
        "participants": 1,
        "participants_excluded": 0,
        "votes_kept": 1,
        "votes": 1,
        "pairs_voted": 1,
        "pairs": 1,
        "pairs_with_enough_votes": 0,
        "settings": {"votes_per_pair": 10},
    }
    page = results_html(report, "t&k n")
    assert 'href="/study/a%20b%26c%3C/votes.csv?token=t%26k+n"' in page
    assert 'src="/study/a%20b%26c%3C/figures/win_rates.png?token=t%26k+n"' in page
    assert "Results of the study a b&amp;c&lt;" in page and "<c<" not in page


def test_an_app_that_cannot_start_is_reported_with_its_error(tmp_path):
    """AppProcess (what notebooks, these tests and the study benchmark start the app with) raises with the app's
    own message when the app exits, instead of waiting for an answer that never comes; the log keeps it too."""
    from iqa_adapter.app.process import AppProcess

    app = AppProcess(["--adapter", "toy:nonexistent"], cwd=tmp_path)
    with pytest.raises(RuntimeError, match="the app exited with 2") as error:
        app.start(timeout=120)
    assert "the toy world has no adapter 'nonexistent'" in str(error.value)
    assert app.log.parent == tmp_path and "no adapter 'nonexistent'" in app.log.read_text()


def test_the_app_process_restarts_on_its_port_and_stops(tmp_path):
    from app_fixtures import condition_folders
    from iqa_adapter.app.process import AppProcess
    from iqa_adapter.app.store import StudySettings, StudyStore
    from iqa_adapter.app.study import create_study

    database = str(tmp_path / "study.sqlite")
    root = condition_folders(tmp_path / "eval", ["base", "toy/p99"], 2)
    create_study(StudyStore(database), "s", root, StudySettings(conditions=("base", "toy/p99")), attention_pairs=1)
    with AppProcess(["--no-generate", "--database", database], cwd=tmp_path) as app:
        assert app.start_seconds is not None and app.start_seconds > 0
        with pytest.raises(RuntimeError, match="already running at .*stop\\(\\) it first"):
            app.start()
        port = app.port
        app.kill()
        with pytest.raises(OSError):
            urllib.request.urlopen(app.url + "/", timeout=5)
        app.start()
        assert app.port == port
        assert urllib.request.urlopen(app.url + "/", timeout=5).status == 200
    assert app.process.poll() is not None
