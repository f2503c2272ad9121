"""Study server throughput: concurrent participants voting on a real `iqa-adapter app` over HTTP on localhost.

The script writes condition folders of random PNG images in a temporary folder, builds a study of every pair of
the conditions on the same key plus attention checks (:func:`iqa_adapter.app.study.create_study`), starts
``iqa-adapter app --database study.sqlite --no-generate`` in a subprocess and lets ``--participants`` threads,
each with its own keep-alive connection, go through their whole sequence at once (``GET next``, then ``POST vote``
until done; without pause by default, so the server is saturated and latency is mostly queueing, or after
``--think`` seconds per pair). It prints votes/s, the latency of the vote requests (p50/p90/p99 in ms; each answer
holds the next pair, so the pair choice is included), the votes stored in the database (read with sqlite3)
against those the server acknowledged, and the spread of votes over the compared pairs. With ``--kill-at F`` the server is killed
(SIGKILL) once a share F of the expected votes is acknowledged and restarted on the same port; clients retry on
connection errors, and the script prints the server's start time and the recovery time (from the kill to the
first vote acknowledged by the new server).

    python benchmarks/bench_study.py                       # 200 participants x (22 + 3 checks), 4 conditions x 50 keys
    python benchmarks/bench_study.py --kill-at 0.4         # SIGKILL + restart once 40 % of the votes are acknowledged
    python benchmarks/bench_study.py --think 2 --images    # participants look 1-3 s at a pair, fetch its images
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from iqa_adapter.app.process import AppProcess

STUDY = "bench"
CHOICES = ("left", "right", "same")


class Run:
    """What the participants share: acknowledged votes, the kill trigger and the first answer after the kill."""

    def __init__(self, expected_votes: int, kill_at: float | None) -> None:
        self.lock = threading.Lock()
        self.acknowledged = 0
        self.kill_count = int(expected_votes * kill_at) if kill_at is not None else None
        self.trigger = threading.Event()
        self.killed_at: float | None = None  # monotonic time of the kill
        self.first_after_kill: float | None = None  # monotonic time of the first vote acknowledged after it

    def acknowledge(self, now: float, reconnected: bool) -> None:
        """Count a vote; ``reconnected``: its request met a connection error (so a later answer is the new
        server's)."""
        with self.lock:
            self.acknowledged += 1
            if self.kill_count is not None and self.acknowledged >= self.kill_count:
                self.trigger.set()
            if reconnected and self.killed_at is not None and self.first_after_kill is None and now > self.killed_at:
                self.first_after_kill = now


class Participant:
    """One participant: its own connection, retries on connection errors and 5xx answers with a short backoff."""

    def __init__(self, port: int, external_id: str, run: Run, fetch_images: bool, think_s: float) -> None:
        self.port, self.id, self.run, self.fetch_images, self.think_s = port, external_id, run, fetch_images, think_s
        self.connection: http.client.HTTPConnection | None = None
        self.rng = random.Random(external_id)
        self.vote_ms: list[float] = []  # latency of the attempt that got the answer
        self.next_ms: list[float] = []
        self.acknowledged: dict[int, str] = {}
        self.retries = 0
        self.server_errors = 0
        self.reconnected = False  # the last request met a connection error

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[bytes, float]:
        backoff = 0.02
        self.reconnected = False
        while True:
            started = time.monotonic()
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                payload = None if body is None else json.dumps(body).encode()
                headers = {} if body is None else {"Content-Type": "application/json"}
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):  # the server is down or restarting
                if self.connection is not None:
                    self.connection.close()
                self.connection = None
                self.retries += 1
                self.reconnected = True
                time.sleep(backoff * (1 + self.rng.random()))
                backoff = min(backoff * 2, 0.5)
                continue
            if response.status >= 500:
                self.server_errors += 1
                time.sleep(backoff)
                continue
            if response.status != 200:
                raise RuntimeError(f"{self.id}: {response.status} on {method} {path}: {data[:300]!r}")
            return data, (time.monotonic() - started) * 1000

    def take_part(self) -> None:
        data, ms = self.request("GET", f"/api/study/{STUDY}/next?participant={quote(self.id)}")
        self.next_ms.append(ms)
        state = json.loads(data)
        while not state["done"]:
            if self.fetch_images:
                self.request("GET", state["left"])
                self.request("GET", state["right"])
            if self.think_s:
                time.sleep(self.rng.uniform(0.5, 1.5) * self.think_s)
            choice = self.rng.choice(CHOICES)
            body = {"participant": self.id, "assignment": state["assignment"], "choice": choice}
            data, ms = self.request("POST", f"/api/study/{STUDY}/vote", body)
            self.vote_ms.append(ms)
            self.acknowledged[state["assignment"]] = choice
            self.run.acknowledge(time.monotonic(), self.reconnected)
            state = json.loads(data)
        if self.connection is not None:
            self.connection.close()


def write_images(root: Path, conditions: list[str], keys: int, size: int) -> Path:
    """``root/images/<condition>/<key>_s0.png``: random images, as an evaluate output lays them out."""
    rng = np.random.default_rng(0)
    for condition in conditions:
        folder = root / "images" / condition
        folder.mkdir(parents=True, exist_ok=True)
        for key in range(keys):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{key:05d}_s0.png")
    return root


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def stored_votes(database: Path) -> tuple[dict[tuple[str, int], str], Counter, int, int]:
    """The votes in the database ((participant, assignment) -> choice), votes per compared pair (pairs without
    votes too), assignments still open, and pairs shown twice to one participant."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        votes = {
            (external, assignment): choice
            for external, assignment, choice in connection.execute(
                "SELECT p.external_id, a.id, a.choice FROM assignments a JOIN participants p "
                "ON p.id = a.participant_id WHERE a.choice IS NOT NULL"
            )
        }
        load = Counter(
            dict.fromkeys((pair for (pair,) in connection.execute("SELECT id FROM pairs WHERE attention = 0")), 0)
        )
        for pair, count in connection.execute(
            "SELECT a.pair_id, COUNT(*) FROM assignments a JOIN pairs ON pairs.id = a.pair_id "
            "WHERE pairs.attention = 0 AND a.choice IS NOT NULL GROUP BY a.pair_id"
        ):
            load[pair] = count
        open_count = connection.execute("SELECT COUNT(*) FROM assignments WHERE choice IS NULL").fetchone()[0]
        twice = connection.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM assignments GROUP BY participant_id, pair_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    finally:
        connection.close()
    return votes, load, open_count, twice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=22, help="compared pairs per participant (paper: 22)")
    parser.add_argument("--checks", type=int, default=3, help="attention checks per participant (paper: 3)")
    parser.add_argument("--conditions", type=int, default=4, help="conditions compared (every pair of them)")
    parser.add_argument("--keys", type=int, default=50, help="images per condition (prompt-seed keys)")
    parser.add_argument("--attention-pairs", type=int, default=20, help="attention-check pairs in the study")
    parser.add_argument("--votes-per-pair", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--images", action="store_true", help="participants also fetch both images of each pair")
    parser.add_argument("--think", type=float, default=0.0, help="mean seconds a participant looks at a pair")
    parser.add_argument("--kill-at", type=float, default=None, help="SIGKILL + restart at this share of the votes")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temp one")
    args = parser.parse_args()
    if args.kill_at is not None and not 0 < args.kill_at < 1:
        raise SystemExit("--kill-at is a share of the expected votes, between 0 and 1")

    from iqa_adapter.app.store import StudySettings, StudyStore
    from iqa_adapter.app.study import create_study

    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        conditions = [f"c{index}" for index in range(args.conditions)]
        write_images(root, conditions, args.keys, args.size)
        database = root / "study.sqlite"
        if database.exists():
            raise SystemExit(f"{database} exists: give an empty --keep folder")
        store = StudyStore(str(database))
        settings = StudySettings(
            conditions=tuple(conditions),
            votes_per_pair=args.votes_per_pair,
            pairs_per_participant=args.pairs,
            attention_checks=args.checks,
        )
        counts = create_study(store, STUDY, root, settings, attention_pairs=args.attention_pairs)
        store.engine.dispose()
        total = min(args.pairs, counts["pairs"]) + min(args.checks, counts["attention_pairs"])
        expected = args.participants * total

        server = AppProcess(["--database", str(database), "--no-generate"], log=root / "app.log")
        start_s = server.start().start_seconds
        run = Run(expected, args.kill_at)
        people = [
            Participant(server.port, f"participant-{index}", run, args.images, args.think)
            for index in range(args.participants)
        ]
        restart_s = None
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=args.participants) as pool:
                futures = [pool.submit(person.take_part) for person in people]
                if args.kill_at is not None:
                    while not run.trigger.wait(0.5):
                        if all(future.done() for future in futures):
                            break
                    run.killed_at = time.monotonic()
                    server.kill()
                    restart_s = server.start().start_seconds
                for future in futures:
                    future.result()
            elapsed = time.monotonic() - started
        finally:
            server.stop()

        votes, load, open_count, twice = stored_votes(database)

    acknowledged = {(person.id, a): choice for person in people for a, choice in person.acknowledged.items()}
    acknowledged_count = sum(len(person.acknowledged) for person in people)
    vote_ms = [ms for person in people for ms in person.vote_ms]
    next_ms = [ms for person in people for ms in person.next_ms]
    lost = sum(1 for key, choice in acknowledged.items() if votes.get(key) != choice)
    print(
        f"study: {args.conditions} conditions x {counts['keys']} keys = {counts['pairs']} compared pairs + "
        f"{counts['attention_pairs']} attention pairs; {args.participants} participants x {total} pairs "
        f"({min(args.pairs, counts['pairs'])} + {min(args.checks, counts['attention_pairs'])} checks) = {expected} "
        f"votes; server start {start_s:.1f} s; {os.cpu_count()} CPUs for the server and the clients"
    )
    print(f"  {'votes/s':34s} {acknowledged_count / elapsed:9.1f}   ({acknowledged_count} votes in {elapsed:.1f} s)")
    print(
        f"  {'vote latency p50 / p90 / p99':34s} {percentile(vote_ms, 0.5):7.1f} / {percentile(vote_ms, 0.9):.1f} / "
        f"{percentile(vote_ms, 0.99):.1f} ms  (max {max(vote_ms):.1f})"
    )
    print(
        f"  {'first next p50 / p90 / p99':34s} {percentile(next_ms, 0.5):7.1f} / {percentile(next_ms, 0.9):.1f} / "
        f"{percentile(next_ms, 0.99):.1f} ms"
    )
    print(f"  {'votes stored / acknowledged':34s} {len(votes):7d} / {acknowledged_count}   (expected {expected})")
    print(
        f"  {'lost or changed / open / twice':34s} {lost:7d} / {open_count} / {twice}   "
        f"(acknowledged votes missing or with another choice, open assignments, pairs shown twice to one person)"
    )
    print(
        f"  {'votes per compared pair':34s} {min(load.values()):7d} - {max(load.values())}   "
        f"(mean {statistics.mean(load.values()):.2f})"
    )
    print(
        f"  {'client retries / 5xx answers':34s} {sum(p.retries for p in people):7d} / {sum(p.server_errors for p in people)}"
    )
    if args.kill_at is not None and run.killed_at is not None:
        recovery = run.first_after_kill - run.killed_at if run.first_after_kill is not None else float("nan")
        print(
            f"  {'kill at':34s} {run.kill_count:7d} votes acknowledged; restart {restart_s:.1f} s, recovery "
            f"(kill to the first vote acknowledged after it) {recovery:.1f} s"
        )


if __name__ == "__main__":
    main()
