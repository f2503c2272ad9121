"""The study on PostgreSQL through SQLAlchemy: two stores (as two servers in front of one database) serving the
same study concurrently. Runs where a PostgreSQL server binary is installed (Debian: `apt-get install
postgresql`; `make test` installs it) and psycopg is importable."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="the study needs the app extra: pip install 'iqa-adapter[app]'")
pytest.importorskip("psycopg", reason="PostgreSQL needs a driver: pip install 'psycopg[binary]'")

from app_fixtures import condition_folders  # noqa: E402
from iqa_adapter.app.process import free_port  # noqa: E402
from iqa_adapter.app.store import StudySettings, StudyStore  # noqa: E402
from iqa_adapter.app.study import create_study, study_report  # noqa: E402

BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run as the `postgres` account then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def database():
    if not BINARIES:
        pytest.skip("no PostgreSQL server installed (Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a `postgres` account to run the server as")
    bin_dir = os.path.dirname(BINARIES[-1])
    root = Path(tempfile.mkdtemp(prefix="iqa-adapter-postgres-"))  # not below pytest's root-only folders
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            shutil.chown(path, account.pw_uid, account.pw_gid)
    subprocess.run(
        _as_postgres_user([f"{bin_dir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=50"
    subprocess.run(
        _as_postgres_user(
            [f"{bin_dir}/pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(root / "log"), "start"]
        ),
        check=True,
        capture_output=True,
    )
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(_as_postgres_user([f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"]), check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_two_servers_on_one_postgres_database_serve_a_study_exactly_once(tmp_path, database):
    conditions = ("base", "toy/p1", "toy/p99")
    root = condition_folders(tmp_path / "eval", list(conditions), 6)
    plain = database.replace("postgresql+psycopg://", "postgresql://")  # the URL as users write it
    first, second = StudyStore(plain), StudyStore(database)
    settings = StudySettings(conditions=conditions, pairs_per_participant=6, attention_checks=1, votes_per_pair=2)
    counts = create_study(first, "pg", root, settings, attention_pairs=3)
    assert counts["pairs"] == 18
    study_id, _ = second.study("pg")
    errors = []

    def participant(number: int) -> None:
        try:
            stores = (first, second)
            person = stores[number % 2].participant(study_id, f"p{number}", "participant")
            step = 0
            while True:
                store = stores[(number + step) % 2]  # alternate servers, as a load balancer would
                assignment = store.next_assignment(study_id, person)
                if assignment is None:
                    return
                # the other server sees the same open pair
                assert stores[(number + step + 1) % 2].next_assignment(study_id, person) == assignment
                store.vote(person, assignment.id, "left")
                stores[(number + step + 1) % 2].vote(person, assignment.id, "right")  # a retry elsewhere: ignored
                step += 1
        except Exception as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=participant, args=(number,)) for number in range(12)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert time.monotonic() - started < 120
    votes = first.votes(study_id)
    assert len(votes) == 12 * 7 and {vote["choice"] for vote in votes} == {"left"}
    by_participant = {}
    for vote in votes:
        by_participant.setdefault(vote["participant"], []).append(vote["pair"])
    assert all(len(pairs) == len(set(pairs)) == 7 for pairs in by_participant.values())
    per_pair = {}
    for vote in votes:
        if not vote["attention"]:
            per_pair[vote["pair"]] = per_pair.get(vote["pair"], 0) + 1
    assert len(per_pair) == 18 and max(per_pair.values()) - min(per_pair.values()) <= 2
    report, _ = study_report(second, "pg", bootstrap_rounds=20)
    assert report["votes"] == 84 and report["participants"] == 12
