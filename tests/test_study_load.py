"""Load test of the study server: 200 participants vote concurrently on a real `iqa-adapter app` on localhost,
the server is SIGKILLed and restarted on the same port in the middle of the run, and the database is then read
directly to check that every acknowledged vote is stored exactly once, that everyone finished, and that the
compared pairs got even load."""

from __future__ import annotations

import http.client
import json
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("sqlalchemy")

from app_fixtures import AppServer, condition_folders  # noqa: E402

PARTICIPANTS = 200
CONDITIONS = ["a", "b", "c"]
KEYS = 20  # 3 conditions x 20 keys: 60 compared pairs
PAIRS_EACH, CHECKS_EACH, CHECK_PAIRS = 4, 1, 10
TOTAL = PAIRS_EACH + CHECKS_EACH
KILL_AT = 0.4  # share of the expected votes acknowledged when the server is killed
DEADLINE_S = 120  # a participant that has not finished by then fails the test instead of hanging it
STUDY = "load"


class ConnectionLost(Exception):
    """A request of a participant that reloads instead of retrying met a connection error."""


class Participant:
    """One simulated participant with its own keep-alive connection; retries a request on connection errors and
    5xx answers (as the study page does) until the server answers, and records every acknowledged vote. With
    ``reload``, a vote that meets a connection error is not re-sent: the participant asks for ``next`` (as a
    reloaded page does) and votes again only when the server still shows the same pair."""

    def __init__(self, port: int, external_id: str, run: LoadRun, reload: bool = False) -> None:
        self.port, self.id, self.run, self.reload = port, external_id, run, reload
        self.connection: http.client.HTTPConnection | None = None
        self.rng = random.Random(external_id)
        self.acknowledged: list[tuple[int, str, bool]] = []  # (assignment, choice, answered before the kill)
        self.implicit = 0  # votes whose answer was lost but that the next pair showed stored
        self.retries = 0
        self.reconnected = False  # a connection error since the last answer
        self.server_errors: list[str] = []
        self.resent: list[tuple[int, int]] = []  # (re-sent assignment, the assignment the answer held)

    def request(self, method: str, path: str, body: dict | None = None, retry: bool = True) -> tuple[dict, bool]:
        """The 200 answer to the request, and whether it came before the server was killed; without ``retry``,
        :class:`ConnectionLost` on a connection error."""
        backoff = 0.02
        while True:
            if time.monotonic() > self.run.deadline:
                raise TimeoutError(f"participant {self.id}: no answer to {method} {path} before the deadline")
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                payload = None if body is None else json.dumps(body).encode()
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.connection.request(method, path, body=payload, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):  # refused, reset, closed: the server is down or restarting
                if self.connection is not None:
                    self.connection.close()
                self.connection = None
                self.retries += 1
                self.reconnected = True
                if not retry:
                    raise ConnectionLost from None
                time.sleep(backoff * (1 + self.rng.random()))
                backoff = min(backoff * 2, 0.4)
                continue
            if response.status >= 500:
                self.server_errors.append(f"{response.status} {method} {path}: {data[:300]!r}")
                time.sleep(backoff)
                continue
            answer = json.loads(data)
            if response.status != 200:
                raise AssertionError(f"participant {self.id}: {response.status} on {method} {path} {body}: {answer}")
            return answer, not self.run.killed

    def next(self) -> dict:
        return self.request("GET", f"/api/study/{STUDY}/next?participant={quote(self.id)}")[0]

    def vote(self, assignment: int, choice: str, retry: bool = True) -> tuple[dict, bool]:
        body = {"participant": self.id, "assignment": assignment, "choice": choice}
        return self.request("POST", f"/api/study/{STUDY}/vote", body, retry)

    def take_part(self) -> None:
        state = self.next()
        self.reconnected = False
        while not state["done"]:
            assert state["total"] == TOTAL and state["position"] == len(self.acknowledged), (self.id, state)
            choice = self.rng.choice(["left", "right", "same"])
            try:
                answer, before_kill = self.vote(state["assignment"], choice, retry=not self.reload)
            except ConnectionLost:  # reload: the server shows the same pair (vote lost) or the next (vote stored)
                time.sleep(0.05)
                answer = self.next()
                before_kill = not self.run.killed
                if not answer["done"] and answer["assignment"] == state["assignment"]:
                    assert answer["position"] == len(self.acknowledged), (self.id, state, answer)
                    continue
                assert answer["done"] or answer["position"] == len(self.acknowledged) + 1, (self.id, state, answer)
                self.implicit += 1
            self.acknowledged.append((state["assignment"], choice, before_kill))
            self.run.acknowledge()
            if not answer["done"]:
                assert answer["assignment"] != state["assignment"], (self.id, state, answer)
            if self.reconnected and not self.reload and len(self.acknowledged) >= 2 and not answer["done"]:
                # the first answer after the server came back: re-send the vote acknowledged before it, with
                # another choice; the server must change nothing and answer the pair now open
                previous, previous_choice, _ = self.acknowledged[-2]
                other = next(c for c in ("left", "right", "same") if c != previous_choice)
                again, _ = self.vote(previous, other)
                self.resent.append((previous, again.get("assignment")))
                assert again == answer, (self.id, "a re-sent vote answered another pair", again, answer)
            self.reconnected = False
            state = answer
        if self.connection is not None:
            self.connection.close()


class LoadRun:
    """What the participants share: the acknowledged-vote count, the kill trigger, whether the kill happened."""

    def __init__(self, expected_votes: int) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.trigger = threading.Event()
        self.kill_at = int(expected_votes * KILL_AT)
        self.killed = False
        self.deadline = time.monotonic() + DEADLINE_S

    def acknowledge(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.kill_at:
                self.trigger.set()


def make_study(tmp_path):
    from iqa_adapter.app.store import StudySettings, StudyStore
    from iqa_adapter.app.study import create_study

    images = condition_folders(tmp_path / "images_root", CONDITIONS, KEYS, size=16)
    database = tmp_path / "study.sqlite"
    store = StudyStore(str(database))
    settings = StudySettings(
        conditions=tuple(CONDITIONS), votes_per_pair=10, pairs_per_participant=PAIRS_EACH, attention_checks=CHECKS_EACH
    )
    counts = create_study(store, STUDY, images, settings, attention_pairs=CHECK_PAIRS)
    store.engine.dispose()
    assert counts["pairs"] == len(CONDITIONS) * (len(CONDITIONS) - 1) // 2 * KEYS
    assert counts["attention_pairs"] == CHECK_PAIRS
    return database, counts


def test_concurrent_participants_survive_a_kill_and_restart(tmp_path):
    database, counts = make_study(tmp_path)
    server = AppServer(["--database", str(database), "--no-generate"], cwd=tmp_path).start()
    run = LoadRun(PARTICIPANTS * TOTAL)
    people = [
        Participant(server.port, f"participant {index}/ü" if index % 2 else f"p{index:03d}", run, index % 4 >= 2)
        for index in range(PARTICIPANTS)
    ]
    restart_seconds = None
    try:
        with ThreadPoolExecutor(max_workers=PARTICIPANTS) as pool:
            futures = [pool.submit(person.take_part) for person in people]
            assert run.trigger.wait(DEADLINE_S), f"only {run.count} votes acknowledged before the deadline"
            killed_at_count = run.count  # read before the flag: every vote counted here is flagged before the kill
            run.killed = True
            server.kill()
            started = time.monotonic()
            server.start()
            restart_seconds = time.monotonic() - started
            for future in futures:
                future.result()  # raises the first participant's failure

        # deliberately re-send acknowledged votes (some from before the kill) with another choice: nothing changes
        before = read_database(database)
        probe = random.Random(0)
        resent = probe.sample([(p, a, c) for p in people for a, c, _ in p.acknowledged], 40)
        resent += [(p, a, c) for p in people[:20] for a, c, before_kill in p.acknowledged[:1] if before_kill]
        for person, assignment, choice in resent:
            other = next(c for c in ("left", "right", "same") if c != choice)
            status, answer = server.post(
                f"/api/study/{STUDY}/vote", {"participant": person.id, "assignment": assignment, "choice": other}
            )
            assert status == 200 and answer["done"] is True, (status, answer)
        # an assignment of another participant is refused, not stored
        status, answer = server.post(
            f"/api/study/{STUDY}/vote",
            {"participant": people[0].id, "assignment": people[1].acknowledged[0][0], "choice": "left"},
        )
        assert status == 400 and "error" in answer
        after = read_database(database)
    finally:
        server.stop()

    errors = [error for person in people for error in person.server_errors]
    assert not errors, f"{len(errors)} server errors, e.g. {errors[:3]}"
    assert before == after, "re-sent votes changed the database"
    rows = after["assignments"]
    acknowledged = {
        (person.id, assignment): choice for person in people for assignment, choice, _ in person.acknowledged
    }
    acknowledged_count = sum(len(person.acknowledged) for person in people)
    assert acknowledged_count == len(acknowledged) == PARTICIPANTS * TOTAL, "an assignment acknowledged twice"
    assert 0 < killed_at_count < PARTICIPANTS * TOTAL
    before_kill = sum(flag for person in people for *_, flag in person.acknowledged)
    assert killed_at_count <= before_kill < acknowledged_count, "the kill did not fall in the middle of the run"
    assert sum(person.retries for person in people) > 0, "no client saw the server go down"
    assert sum(len(person.resent) for person in people) > 0, "no vote was re-sent during the run"

    # every participant finished: exactly TOTAL votes at positions 0..TOTAL-1, nothing open
    assert len(after["participants"]) == PARTICIPANTS
    by_participant = defaultdict(list)
    for row in rows:
        by_participant[row["external_id"]].append(row)
    assert set(by_participant) == {person.id for person in people}
    for external_id, mine in by_participant.items():
        assert len(mine) == TOTAL, (external_id, mine)
        assert all(row["choice"] is not None for row in mine), (external_id, "an open assignment left")
        assert sorted(row["position"] for row in mine) == list(range(TOTAL)), external_id
        assert len({row["pair_id"] for row in mine}) == TOTAL, (external_id, "a pair shown twice")
        assert sum(row["attention"] for row in mine) == CHECKS_EACH, external_id
        assert all(row["position"] > 0 for row in mine if row["attention"]), (external_id, "check first")
    # every acknowledged vote stored with its choice, and nothing stored that was not acknowledged
    stored = {(row["external_id"], row["id"]): row["choice"] for row in rows if row["choice"] is not None}
    assert stored == acknowledged
    assert len({row["id"] for row in rows}) == len(rows) == acknowledged_count
    # even load: every compared pair is needed (800 votes on 60 pairs), so their votes differ by at most 2
    compared = Counter(dict.fromkeys(after["compared_pairs"], 0))
    checks = Counter(dict.fromkeys(after["attention_pairs"], 0))
    for row in rows:
        (checks if row["attention"] else compared)[row["pair_id"]] += 1
    assert len(compared) == counts["pairs"] and len(checks) == counts["attention_pairs"]
    assert max(compared.values()) - min(compared.values()) <= 2, sorted(compared.values())
    assert max(checks.values()) - min(checks.values()) <= 2, sorted(checks.values())
    print(
        f"\n{acknowledged_count} votes of {PARTICIPANTS} participants stored once each; killed at {killed_at_count} "
        f"acknowledged, restarted in {restart_seconds:.1f} s; {sum(p.retries for p in people)} client retries, "
        f"{sum(len(p.resent) for p in people)} votes re-sent during the run and {len(resent)} after it, "
        f"{sum(p.implicit for p in people)} answers lost but the vote stored; "
        f"votes per compared pair {min(compared.values())}-{max(compared.values())}"
    )


def read_database(path) -> dict:
    """The study's rows, read with sqlite3 (not through the package)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    connection.row_factory = sqlite3.Row
    try:
        assignments = [
            dict(row)
            for row in connection.execute(
                "SELECT a.id, a.participant_id, a.pair_id, a.position, a.left, a.choice, a.voted, "
                "p.external_id, pairs.attention FROM assignments a JOIN participants p ON p.id = a.participant_id "
                "JOIN pairs ON pairs.id = a.pair_id JOIN studies s ON s.id = p.study_id WHERE s.name = ? "
                "ORDER BY a.id",
                (STUDY,),
            )
        ]
        participants = [dict(row) for row in connection.execute("SELECT id, external_id FROM participants")]
        pair_ids = {
            bool(attention): [
                row[0] for row in connection.execute("SELECT id FROM pairs WHERE attention = ?", (attention,))
            ]
            for attention in (0, 1)
        }
        duplicates = connection.execute(
            "SELECT participant_id, pair_id, COUNT(*) FROM assignments GROUP BY participant_id, pair_id "
            "HAVING COUNT(*) > 1"
        ).fetchall()
        assert not duplicates, f"participants shown a pair twice: {duplicates[:5]}"
    finally:
        connection.close()
    return {
        "assignments": assignments,
        "participants": participants,
        "compared_pairs": pair_ids[False],
        "attention_pairs": pair_ids[True],
    }
