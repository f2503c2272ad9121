"""The web app in a real browser: headless Chromium driven by Selenium against `iqa-adapter app` in a subprocess.

The generate tab (sliders, a generated image and its downloads, a sweep), a participant clicking through a study
(progress, the end page, votes stored once, participant ids from the URL), and the results page against win rates
computed here by hand from votes cast through the JSON API. Skipped when Chromium, chromedriver or selenium is
missing (`make test` installs the browser where apt-get is available).
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections import defaultdict
from contextlib import closing
from itertools import combinations
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

CHROMIUM = next(
    (path for path in ("/usr/bin/chromium", shutil.which("chromium")) if path and Path(path).exists()), None
)
CHROMEDRIVER = next(
    (path for path in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if path and Path(path).exists()), None
)
_missing = [
    what
    for what, found in (
        ("chromium (apt-get install chromium)", CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER),
        ("selenium (pip install selenium)", importlib.util.find_spec("selenium")),
        *((f"{name} (pip install 'iqa-adapter[app]')", importlib.util.find_spec(name)) for name in ("starlette", "uvicorn", "sqlalchemy")),
    )
    if not found
]  # fmt: skip
if _missing:
    pytest.skip(f"the browser tests need {', '.join(_missing)}", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from app_fixtures import AppServer, condition_folders  # noqa: E402
from iqa_adapter.app.store import StudySettings, StudyStore  # noqa: E402
from iqa_adapter.app.study import create_study  # noqa: E402

CONDITIONS = ["base", "toy/p1", "toy/p99"]
DEGRADED = "attention:degraded"
WALK_PAIRS = 4 + 1  # --pairs-per-participant 4 plus --attention-checks 1
SCRIPTED = dict(votes_per_pair=3, pairs_per_participant=12, attention_checks=1)  # every pair of 4 keys, one check


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app (toy world, one thread) on a database with two studies: "walk", created with the CLI, for a
    participant in the browser, and "scripted" (every pair of 3 conditions on 4 keys) for votes cast by API."""
    root = tmp_path_factory.mktemp("app_browser")
    database = root / "study.sqlite"
    condition_folders(root / "walk", CONDITIONS, keys=4, seed=0)
    condition_folders(root / "scripted", CONDITIONS, keys=4, seed=1)
    # the scripted study in this process first (it creates the tables), then the CLI while the server starts
    create_study(
        StudyStore(str(database)),
        "scripted",
        root / "scripted",
        StudySettings(conditions=tuple(CONDITIONS), **SCRIPTED),
        attention_pairs=2,
    )
    cli = subprocess.Popen(
        [sys.executable, "-m", "iqa_adapter", "study", "create", "--images", str(root / "walk"),
         "--conditions", ",".join(CONDITIONS), "--database", str(database), "--name", "walk",
         "--pairs-per-participant", "4", "--attention-checks", "1", "--attention-pairs", "2"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = AppServer(["--database", str(database), "--threads", "1"], root)
    try:
        server.start()
        output, _ = cli.communicate(timeout=180)
        assert cli.returncode == 0, output
        assert json.loads(output.splitlines()[0])["pairs"] == 12
        yield SimpleNamespace(server=server, url=server.url, database=database)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        server.stop()


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout: float = 20, message: str = ""):
    """``condition(driver)`` once truthy (its value), polled every 0.1 s; a TimeoutException after ``timeout``."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def loaded_images(driver, css: str) -> list[bool]:
    """For each ``<img>`` matching ``css``: whether it has loaded (complete, with a width)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((i) => i.complete && i.naturalWidth > 0);", css
    )


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def query(database: Path, sql: str, *parameters) -> list[tuple]:
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        return connection.execute(sql, parameters).fetchall()


# ---------------------------------------------------------------- the generate tab


def test_generate_tab_renders_an_image_and_a_sweep(app, browser):
    model = app.server.get("/api/model")
    metrics = [metric["name"] for metric in model["metrics"]]
    assert metrics, "the toy adapter has quality metrics"
    browser.get(app.url + "/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#quality input[type=range]")) == len(metrics))
    for name in metrics:
        slider = browser.find_element(By.ID, f"q-{name}")
        assert slider.get_attribute("value") == "99"
        wait(browser, lambda d, name=name: re.match(r"p99: z = -?\d+\.\d\d, raw = ", text(d, f"#v-{name}")))
    sweep_options = Select(browser.find_element(By.ID, "sweep")).options
    assert [option.get_attribute("value") for option in sweep_options] == ["", *metrics]

    # the first slider to its minimum with the keyboard: the text shows percentile 1 with the adapter's z there
    moved = metrics[0]
    before = text(browser, f"#v-{moved}")
    browser.find_element(By.ID, f"q-{moved}").send_keys(Keys.HOME)
    wait(browser, lambda d: text(d, f"#v-{moved}") != before, message="the slider's text did not change")
    row = next(row for row in model["metrics"][0]["table"] if row["percentile"] == 1)
    assert text(browser, f"#v-{moved}").startswith(f"p1: z = {row['z']:.2f}, raw = ")
    assert browser.find_element(By.ID, f"q-{moved}").get_attribute("value") == "1"

    browser.find_element(By.ID, "generate").click()
    wait(browser, lambda d: any(loaded_images(d, "#results img")), 60, "no generated image loaded within 60 s")
    assert text(browser, "#status").startswith("done in")
    assert browser.find_element(By.ID, "generate").is_enabled()
    figures = browser.find_elements(By.CSS_SELECTOR, "#results figure")
    assert len(figures) == 1
    png = figures[0].find_element(By.CSS_SELECTOR, "a[download$='.png']").get_attribute("href")
    sidecar = figures[0].find_element(By.CSS_SELECTOR, "a[download$='.json']").get_attribute("href")
    settings = json.loads(fetch(sidecar))
    with Image.open(io.BytesIO(fetch(png))) as image:
        assert image.format == "PNG" and image.size == (settings["width"], settings["height"])
    assert settings["prompt"] == browser.find_element(By.ID, "prompt").get_attribute("value")
    assert settings["quality"][moved] == "p1"  # the moved slider reached the request
    assert all(settings["quality"][name] == "p99" for name in metrics[1:])

    # a sweep of the last metric: seven labelled images in one row, replacing the single image
    swept = metrics[-1]
    Select(browser.find_element(By.ID, "sweep")).select_by_value(swept)
    browser.find_element(By.ID, "generate").click()
    expected = [f"{swept} p{percentile}" for percentile in model["sweep_percentiles"]]
    assert len(expected) == 7

    def sweep_shown(driver):
        images = loaded_images(driver, "#results.row > figure img")
        return len(images) == 7 and all(images)

    wait(browser, sweep_shown, 60, "the sweep's 7 images did not all load within 60 s")
    captions = [
        caption.text.splitlines()[0] for caption in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")
    ]
    assert captions == expected
    assert [image.get_attribute("alt") for image in browser.find_elements(By.CSS_SELECTOR, "#results img")] == expected
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results a[download$='.json']")) == 7
    tops = {figure.location["y"] for figure in browser.find_elements(By.CSS_SELECTOR, "#results figure")}
    assert len(tops) == 1, "the sweep's images should share one row, not wrap"


# ---------------------------------------------------------------- a participant in the browser


def vote_buttons_ready(driver):
    """The progress text once the pair's images have loaded and the buttons are enabled, or once finished (read in
    one script, so that the text and the buttons are of the same moment)."""
    progress, enabled = driver.execute_script(
        "return [document.getElementById('progress-text').textContent,"
        " ['left', 'right', 'same'].every((side) => !document.getElementById('vote-' + side).disabled)];"
    )
    return progress if enabled or progress.startswith("Thank you") else None


def test_participant_completes_a_study(app, browser):
    browser.get(app.url + "/study/walk?participant=alice")
    seen = []
    for number in range(WALK_PAIRS):
        progress = wait(browser, vote_buttons_ready, 30)
        assert progress == f"Pair {number + 1} of {WALK_PAIRS}"
        assert all(loaded_images(browser, ".pair img"))
        seen.append({browser.find_element(By.ID, side).get_attribute("src") for side in ("left", "right")})
        if number == 2:  # the keyboard shortcut for "same"
            ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
        else:
            browser.find_element(By.ID, ("vote-left", "vote-right")[number % 2]).click()
        wait(browser, lambda d, progress=progress: text(d, "#progress-text") != progress, 30)
    assert len({frozenset(pair) for pair in seen}) == WALK_PAIRS  # never the same pair twice
    final = wait(browser, vote_buttons_ready, 30)
    assert final.startswith("Thank you"), final
    assert not browser.find_element(By.CSS_SELECTOR, ".pair").is_displayed()
    assert not any(browser.find_element(By.ID, f"vote-{side}").is_enabled() for side in ("left", "right", "same"))
    assert text(browser, "#message") == ""

    # stored exactly once: N assignments, each voted, one per position; a repeated vote changes nothing
    rows = query(
        app.database,
        "SELECT a.id, a.position, a.choice FROM assignments a JOIN participants p ON a.participant_id = p.id "
        "JOIN studies s ON p.study_id = s.id WHERE s.name = 'walk' AND p.external_id = 'alice' ORDER BY a.position",
    )
    assert [position for _, position, _ in rows] == list(range(WALK_PAIRS))
    assert [choice for _, _, choice in rows] == ["left", "right", "same", "right", "left"]
    status, answer = app.server.post(
        "/api/study/walk/vote", {"participant": "alice", "assignment": rows[-1][0], "choice": "right"}
    )
    assert status == 200 and answer["done"] is True
    again = query(
        app.database,
        "SELECT a.choice FROM assignments a JOIN participants p ON a.participant_id = p.id "
        "WHERE p.external_id = 'alice' ORDER BY a.position",
    )
    assert [choice for (choice,) in again] == ["left", "right", "same", "right", "left"]
    report = app.server.get("/api/study/walk/report")
    assert report["votes"] == WALK_PAIRS and report["participants"] == 1

    # a reload of the finished study shows the end page again, not a new pair
    browser.refresh()
    assert wait(browser, vote_buttons_ready, 30).startswith("Thank you")


def test_participant_ids_from_the_url(app, browser):
    # no id: one is generated, put in the URL (a reload continues the same session) and stored as "generated"
    browser.get(app.url + "/study/walk")
    wait(browser, lambda d: "participant=" in d.current_url)
    generated = parse_qs(urlparse(browser.current_url).query)["participant"][0]
    assert len(generated) >= 8
    assert wait(browser, vote_buttons_ready, 30) == f"Pair 1 of {WALK_PAIRS}"
    left = browser.find_element(By.ID, "left").get_attribute("src")
    browser.refresh()
    assert wait(browser, vote_buttons_ready, 30) == f"Pair 1 of {WALK_PAIRS}"
    assert browser.find_element(By.ID, "left").get_attribute("src") == left  # the same open pair
    assert parse_qs(urlparse(browser.current_url).query)["participant"] == [generated]

    # a platform's parameter is taken as the id, and the URL is left as it is
    browser.get(app.url + "/study/walk?PROLIFIC_PID=xyz")
    assert wait(browser, vote_buttons_ready, 30) == f"Pair 1 of {WALK_PAIRS}"
    assert browser.current_url == app.url + "/study/walk?PROLIFIC_PID=xyz"
    people = dict(
        query(
            app.database,
            "SELECT p.external_id, p.source FROM participants p JOIN studies s ON p.study_id = s.id "
            "WHERE s.name = 'walk'",
        )
    )
    assert people[generated] == "generated" and people["xyz"] == "PROLIFIC_PID"


# ---------------------------------------------------------------- the results page against hand-computed rates

RANK = {"toy/p99": 2, "base": 1, "toy/p1": 0}


def preferred(participant: str, key: str, conditions: tuple[str, str]) -> str | None:
    """The condition the scripted participant votes for, or None for "same"."""
    if DEGRADED in conditions:  # an attention check: mallory fails it, the others choose the clean image
        return DEGRADED if participant == "mallory" else next(c for c in conditions if c != DEGRADED)
    if participant == "mallory":
        return "toy/p1" if "toy/p1" in conditions else max(conditions, key=RANK.get)
    if participant == "cat":  # p99 always better, except on the last key; base and p1 look the same
        if "toy/p99" not in conditions or key.startswith("00003"):
            return None
        return "toy/p99"
    if set(conditions) == {"base", "toy/p1"} and key.startswith("00000"):  # ann and bob prefer p1 on key 0
        return "toy/p1"
    return max(conditions, key=RANK.get)


def expected_results(votes: list[tuple[str, str, str, str, str]]) -> dict:
    """The paper's win rates from ``(participant, key, left condition, right condition, choice)`` votes: participants
    who chose the degraded image of an attention check are left out, and so are the checks; a pair is won by the
    condition with more votes than the other and than "same"; a condition's overall win rate is the share of its
    pairs it won, its vote share the mean of its share of each pair's votes; the pairwise rate of a over b the share
    of their pairs a won."""
    failed = set()
    for participant, _, left, right, choice in votes:
        chosen = {"left": left, "right": right}.get(choice)  # None: "same"
        if DEGRADED in (left, right) and chosen in (None, DEGRADED):
            failed.add(participant)
    tallies = defaultdict(lambda: defaultdict(int))
    for participant, key, left, right, choice in votes:
        if participant in failed or DEGRADED in (left, right):
            continue
        tally = tallies[key, frozenset((left, right))]
        tally["same" if choice == "same" else (left if choice == "left" else right)] += 1
    won, share, count = defaultdict(int), defaultdict(float), defaultdict(int)
    beat, met = defaultdict(int), defaultdict(int)
    for (_, pair), tally in tallies.items():
        a, b = sorted(pair)
        total = tally[a] + tally[b] + tally["same"]
        winner = next((c for c, other in ((a, b), (b, a)) if tally[c] > max(tally[other], tally["same"])), None)
        for condition in (a, b):
            count[condition] += 1
            share[condition] += tally[condition] / total
            won[condition] += winner == condition
        met[a, b] += 1
        met[b, a] += 1
        if winner is not None:
            beat[winner, b if winner == a else a] += 1
    kept = [vote for vote in votes if vote[0] not in failed and DEGRADED not in vote[2:4]]
    return {
        "win_rate": {c: won[c] / count[c] for c in count},
        "vote_share": {c: share[c] / count[c] for c in count},
        "pairwise": {(a, b): beat[a, b] / met[a, b] for a, b in met},
        "participants": len({vote[0] for vote in votes}),
        "excluded": len(failed),
        "votes": len(votes),
        "kept": len(kept),
        "pairs_voted": len(tallies),
    }


def cast_votes(app, participant: str) -> list[tuple[str, str, str, str, str]]:
    """Vote through the JSON API as ``preferred`` says until the study is done; the votes cast."""
    images = {
        image_id: (condition, key)
        for image_id, condition, key in query(
            app.database,
            "SELECT i.id, i.condition, i.key FROM images i JOIN studies s ON i.study_id = s.id WHERE s.name = ?",
            "scripted",
        )
    }
    cast = []
    state = app.server.get(f"/api/study/scripted/next?participant={participant}&source=script")
    while not state["done"]:
        assert state["position"] == len(cast)
        (left, key), (right, right_key) = (images[int(state[side].rsplit("/", 1)[1])] for side in ("left", "right"))
        assert key == right_key
        choice = preferred(participant, key, (left, right))
        choice = "same" if choice is None else ("left" if choice == left else "right")
        cast.append((participant, key, left, right, choice))
        status, state = app.server.post(
            "/api/study/scripted/vote",
            {"participant": participant, "assignment": state["assignment"], "choice": choice, "source": "script"},
        )
        assert status == 200, state
    return cast


def test_results_page_shows_hand_computed_win_rates(app, browser):
    # the study holds every pair of the conditions on each of its 4 keys, as the hand computation assumes
    pairs = query(
        app.database,
        "SELECT p.key, p.condition_a, p.condition_b FROM pairs p JOIN studies s ON p.study_id = s.id "
        "WHERE s.name = 'scripted' AND NOT p.attention",
    )
    keys = {key for key, _, _ in pairs}
    assert len(keys) == 4
    assert sorted(pairs) == sorted((key, a, b) for key in keys for a, b in combinations(CONDITIONS, 2))
    # the image API serves the stored bytes that the side lookup relies on
    image_id, data = query(app.database, "SELECT id, data FROM images WHERE condition = 'toy/p99' LIMIT 1")[0]
    assert fetch(f"{app.url}/api/study/scripted/image/{image_id}") == data

    votes = [vote for participant in ("ann", "bob", "cat", "mallory") for vote in cast_votes(app, participant)]
    assert len(votes) == 4 * 13 and sum(DEGRADED in vote[2:4] for vote in votes) == 4
    expected = expected_results(votes)
    # the pattern worked out on paper: p99 wins all 8 of its pairs; base wins 3 of 8 (base-p1 on keys 1-3), p1 one
    assert expected["win_rate"] == pytest.approx({"toy/p99": 1.0, "base": 3 / 8, "toy/p1": 1 / 8})
    assert expected["vote_share"] == pytest.approx({"toy/p99": (7 + 1 / 3) / 8, "base": 2 / 8, "toy/p1": (2 / 3) / 8})
    assert expected["excluded"] == 1 and expected["kept"] == 36

    browser.get(app.url + "/study/scripted/results")
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#win-rates tr")[1:]
    ]
    assert [row[0] for row in rows] == CONDITIONS
    for condition, win_rate, vote_share, _ in rows:
        assert win_rate == f"{expected['win_rate'][condition]:.3f}", condition
        assert vote_share == f"{expected['vote_share'][condition]:.3f}", condition
    scores = {row[0]: float(row[3].split()[0]) for row in rows}
    assert scores["toy/p99"] > scores["base"] > scores["toy/p1"]

    matrix = browser.find_elements(By.CSS_SELECTOR, "#pairwise tr")
    assert [cell.text for cell in matrix[0].find_elements(By.TAG_NAME, "th")][1:] == CONDITIONS
    for row in matrix[1:]:
        a = row.find_element(By.TAG_NAME, "th").text
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells == ["-" if a == b else f"{expected['pairwise'][a, b]:.3f}" for b in CONDITIONS], a

    assert text(browser, "#counts") == (
        f"{expected['participants']} participants ({expected['excluded']} excluded by the attention checks), "
        f"{expected['kept']} votes kept of {expected['votes']}, {expected['pairs_voted']} of 12 pairs voted, "
        f"12 with at least {SCRIPTED['votes_per_pair']} votes"
    )
    wait(browser, lambda d: (images := loaded_images(d, ".row img")) and len(images) == 3 and all(images), 60)


def test_a_vote_while_the_server_is_down_is_retried(app, browser):
    """The server killed (SIGKILL) while a participant looks at a pair: the vote clicked meanwhile says the
    connection is lost, goes through once the server is back, and is stored once."""
    browser.get(app.url + "/study/walk?participant=dora")
    assert wait(browser, vote_buttons_ready, 30) == f"Pair 1 of {WALK_PAIRS}"
    app.server.kill()
    try:
        browser.find_element(By.ID, "vote-left").click()
        wait(browser, lambda d: text(d, "#message") == "connection lost, retrying...", 30)
    finally:
        app.server.start()
    assert wait(browser, vote_buttons_ready, 60) == f"Pair 2 of {WALK_PAIRS}"
    assert text(browser, "#message") == ""
    choices = query(
        app.database,
        "SELECT a.position, a.choice FROM assignments a JOIN participants p ON a.participant_id = p.id "
        "WHERE p.external_id = 'dora' ORDER BY a.position",
    )
    assert choices == [(0, "left"), (1, None)]


def test_an_image_that_fails_to_load_is_retried(app, browser):
    """A pair's image that does not load (a network error) is loaded again until it does; the buttons wait for it."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/api/study/walk/image/*"]})
    try:
        browser.get(app.url + "/study/walk?participant=erin")
        wait(browser, lambda d: text(d, "#message") == "an image did not load, retrying...", 30)
        assert text(browser, "#progress-text") == f"Pair 1 of {WALK_PAIRS}"
        assert vote_buttons_ready(browser) is None  # no vote before both images are shown
    finally:
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})
        browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    assert wait(browser, vote_buttons_ready, 30) == f"Pair 1 of {WALK_PAIRS}"
    assert all(loaded_images(browser, ".pair img"))
    assert text(browser, "#message") == ""


def test_the_readme_screenshots_tool_photographs_the_three_pages(tmp_path):
    """tools/app_screenshots.py (the README's app figures) runs end to end: app, study, votes, three screenshots."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "app_screenshots.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--out", str(tmp_path), "--width", "800", "--height", "600"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("app_generate.png", "app_study.png", "app_results.png"):
        with Image.open(tmp_path / name) as shot:
            assert shot.size == (800, 600)
            colours = shot.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 50, f"{name} is nearly blank"  # images, text and widgets drawn
