"""Screenshots of the web app for the README: the generate tab after a sweep, a participant's page showing a pair,
and the results page of a small study.

Starts `iqa-adapter app` on the embedded toy world (CPU, one thread) with a fresh study database in a temporary
folder, generates the study's images through the app itself (4 prompts x conditions base = adapter scale 0,
toy/p1, toy/p50, toy/p99: every metric at that percentile), builds the study, casts the votes of 10 simulated
participants (one of whom fails the attention check) through the JSON API, then photographs the three pages in
headless Chromium (the Debian chromium and chromedriver, as the browser tests) at 1280x900:

    python tools/app_screenshots.py                # docs/figures/app_generate.png, app_study.png, app_results.png
    python tools/app_screenshots.py --out /tmp/shots --width 1440 --height 1000

Needs the app and test extras (starlette, uvicorn, sqlalchemy, selenium) and `apt-get install chromium
chromium-driver`. Takes about a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from iqa_adapter.app.store import StudyStore

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "a red circle on a blue background",
    "a large white star on the left on a striped purple background",
    "a yellow sun on the right above green hills under a blue sky",
    "a small pink diamond at the top on a checked green background",
]
CONDITIONS = {"base": None, "toy/p1": 1, "toy/p50": 50, "toy/p99": 99}  # percentile of every metric; None: no adapter
TASTE = {"base": 1.2, "toy/p1": 0.0, "toy/p50": 1.5, "toy/p99": 2.6}  # the simulated participants' mean preference
DEGRADED = "attention:degraded"


def browser(width: int, height: int):
    """Headless Chromium through the Debian chromium and chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
    driver = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and Path(p).exists()), None)
    if chromium is None or driver is None:
        raise SystemExit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    # the page itself WIDTHxHEIGHT (--window-size counts the window's frame too)
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return chrome


class App:
    """`iqa-adapter app --database DATABASE` in a subprocess on a free port."""

    def __init__(self, database: Path, threads: int) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = database.parent / "app.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iqa_adapter", "app", "--database", str(database), "--threads", str(threads),
                 "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the app did not start:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)

    def call(self, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
        return json.loads(payload) if response.headers.get_content_type() == "application/json" else payload

    def generate(self, body: dict) -> list[bytes]:
        """The PNG bytes of a generation request's images."""
        job = self.call("/api/generate", body)
        while job["state"] in ("queued", "running"):
            time.sleep(0.1)
            job = self.call(f"/api/jobs/{job['id']}")
        if job["state"] != "done":
            raise SystemExit(f"generation failed: {job['error']}")
        return [self.call(image["url"]) for image in job["images"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def study_images(app: App, folder: Path) -> None:
    """``folder/images/<condition>/<prompt>_s<seed>.png`` for every prompt and condition, generated by the app."""
    metrics = [metric["name"] for metric in app.call("/api/model")["metrics"]]
    for seed, prompt in enumerate(PROMPTS):
        for condition, percentile in CONDITIONS.items():
            request = {"prompt": prompt, "seed": seed, "qualities": dict.fromkeys(metrics, percentile or 50)}
            if percentile is None:
                request["scale"] = 0.0
            (png,) = app.generate(request)
            path = folder / "images" / condition / f"{seed:05d}_s{seed}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)


def simulate_votes(app: App, database: Path, study: str, participants: int = 10, seed: int = 0) -> None:
    """Votes of ``participants`` simulated people through the JSON API: each prefers the condition with the higher
    ``TASTE`` plus noise, says "same" when close, passes the attention checks; the last one fails them."""
    with closing(sqlite3.connect(database)) as connection:
        conditions = dict(connection.execute("SELECT id, condition FROM images"))
    rng = random.Random(seed)
    for number in range(participants):
        person = f"simulated-{number + 1}"
        state = app.call(f"/api/study/{study}/next?participant={person}&source=script")
        while not state["done"]:
            left, right = (conditions[int(state[side].rsplit("/", 1)[1])] for side in ("left", "right"))
            if DEGRADED in (left, right):
                careless = number == participants - 1
                choice = "left" if (left == DEGRADED) == careless else "right"
            else:
                difference = TASTE[left] - TASTE[right] + rng.gauss(0, 1.0)
                choice = "same" if abs(difference) < 0.4 else ("left" if difference > 0 else "right")
            body = {"participant": person, "assignment": state["assignment"], "choice": choice, "source": "script"}
            state = app.call(f"/api/study/{study}/vote", body)


def wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def all_loaded(driver, css: str, count: int | None = None) -> bool:
    loaded = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((i) => i.complete && i.naturalWidth > 0);", css
    )
    return bool(loaded) and all(loaded) and (count is None or len(loaded) == count)


def screenshots(app: App, study: str, out: Path, width: int, height: int) -> list[Path]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser(width, height)
    written = []
    try:
        driver.get(app.url + "/")
        wait(driver, lambda d: len(Select(d.find_element(By.ID, "sweep")).options) > 1)
        # a sweep of the first metric at adapter scale 1, the other metrics at p50: the clearest row on the toy world
        sweep = Select(driver.find_element(By.ID, "sweep"))
        metrics = [option.get_attribute("value") for option in sweep.options[1:]]
        sweep.select_by_value(metrics[0])
        settings = [("scale", "1"), *((f"q-{metric}", "50") for metric in metrics[1:])]
        driver.execute_script(
            "for (const [id, value] of arguments[0]) {"
            "  const input = document.getElementById(id); input.value = value;"
            "  input.dispatchEvent(new Event('input')); }",
            settings,
        )
        driver.find_element(By.ID, "generate").click()
        wait(driver, lambda d: all_loaded(d, "#results img", 7), 120)
        written.append(out / "app_generate.png")
        driver.save_screenshot(str(written[-1]))

        driver.get(f"{app.url}/study/{study}?participant=screenshot")
        wait(driver, lambda d: d.find_element(By.ID, "vote-left").is_enabled())
        written.append(out / "app_study.png")
        driver.save_screenshot(str(written[-1]))

        driver.get(f"{app.url}/study/{study}/results")
        wait(driver, lambda d: all_loaded(d, ".row img", 3), 120)
        written.append(out / "app_results.png")
        driver.save_screenshot(str(written[-1]))
    finally:
        driver.quit()
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="folder for the three PNGs")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the app")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="app_screenshots_") as folder:
        folder = Path(folder)
        database = folder / "study.sqlite"
        StudyStore(str(database))  # an empty study database: the app serves only one that exists
        app = App(database, args.threads)
        try:
            study_images(app, folder)
            subprocess.run(
                [sys.executable, "-m", "iqa_adapter", "study", "create", "--images", str(folder), "--conditions",
                 ",".join(CONDITIONS), "--database", str(database), "--name", "quality", "--votes-per-pair", "3",
                 "--pairs-per-participant", "8", "--attention-checks", "1", "--attention-pairs", "2"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            simulate_votes(app, database, "quality")
            written = screenshots(app, "quality", args.out, args.width, args.height)
        finally:
            app.stop()
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
