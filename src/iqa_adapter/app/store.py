"""Where a subjective study lives: its images, pairs, participants and votes, in one SQL database.

SQLite by default (a file; WAL journal, so that participants read while others vote, and each vote is committed
before the next pair is served, so that a kill of the server loses nothing acknowledged); any database
SQLAlchemy reaches (``postgresql://...``) for studies that outgrow one server. Images are stored in the database
too, so that a study is one file (or one database) that any server in front of it can serve.

Serving: a participant has at most one open *assignment* (a pair shown, not yet voted) and never gets a pair twice
(both enforced by unique indexes, so two tabs or a retried request cannot break them). The next pair is the one
with the fewest votes and open assignments among those the participant has not seen, so every pair reaches the
study's ``votes_per_pair`` before any gets more; attention checks (a clean image against a heavily degraded copy)
come at positions drawn per participant. A vote is stored exactly once: voting on an assignment that already has
its vote changes nothing and answers with the same next pair.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from ..hub import error_first_line

CHOICES = ("left", "right", "same")
OPEN_ASSIGNMENT_SECONDS = 600  # an unvoted assignment counts towards its pair's load for this long

metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("settings", sa.Text, nullable=False),  # JSON: conditions, votes per pair, pairs per participant, ...
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False, index=True),
    sa.Column("condition", sa.String(200), nullable=False),  # "attention:degraded" for a check's degraded copy
    sa.Column("key", sa.String(500), nullable=False),  # the file name shared by the images of one prompt and seed
    sa.Column("source", sa.String(1000), nullable=False),  # where the image came from (relative path)
    sa.Column("media_type", sa.String(50), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
)

pairs = sa.Table(
    "pairs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("image_a", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("image_b", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
    sa.Column("condition_a", sa.String(200), nullable=False),
    sa.Column("condition_b", sa.String(200), nullable=False),
    sa.Column("key", sa.String(500), nullable=False),
    sa.Column("attention", sa.Boolean, nullable=False, default=False),
    sa.Column("expected", sa.String(1), nullable=True),  # "a" or "b": the right answer of an attention check
    sa.Index("pairs_by_study_and_kind", "study_id", "attention"),
)

participants = sa.Table(
    "participants",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("study_id", sa.Integer, sa.ForeignKey("studies.id"), nullable=False),
    sa.Column("external_id", sa.String(200), nullable=False),
    sa.Column("source", sa.String(50), nullable=False),  # the URL parameter the id came from, or "generated"
    sa.Column("created", sa.Float, nullable=False),
    sa.UniqueConstraint("study_id", "external_id"),
)

assignments = sa.Table(
    "assignments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("pair_id", sa.Integer, sa.ForeignKey("pairs.id"), nullable=False, index=True),
    sa.Column("position", sa.Integer, nullable=False),  # 0, 1, ... in the participant's sequence
    sa.Column("left", sa.String(1), nullable=False),  # which image of the pair ("a" or "b") was shown on the left
    sa.Column("shown", sa.Float, nullable=False),
    sa.Column("choice", sa.String(5), nullable=True),  # left / right / same; NULL until voted
    sa.Column("voted", sa.Float, nullable=True),
    sa.UniqueConstraint("participant_id", "pair_id"),
    sa.UniqueConstraint("participant_id", "position"),
)
# at most one open assignment per participant
sa.Index(
    "one_open_assignment",
    assignments.c.participant_id,
    unique=True,
    sqlite_where=assignments.c.choice.is_(None),
    postgresql_where=assignments.c.choice.is_(None),
)


class StudyError(ValueError):
    """A request the study cannot serve (unknown assignment or choice, bad participant id); the message names the
    fix."""


class UnknownStudyError(StudyError):
    """No study of that name in the database."""


@dataclass(frozen=True)
class StudySettings:
    """How a study is served: ``pairs_per_participant`` compared pairs plus ``attention_checks`` checks each
    (the paper: 22 + 3), every pair to at least ``votes_per_pair`` participants (the paper: 10); participants who
    fail more than ``max_failed_checks`` checks are excluded from the results (the paper: none allowed)."""

    conditions: tuple[str, ...]
    votes_per_pair: int = 10
    pairs_per_participant: int = 22
    attention_checks: int = 3
    max_failed_checks: int = 0
    completion_code: str | None = None
    instructions: str = (
        "From each pair, choose the image you believe has higher visual quality: clarity, contrast, "
        'brightness, colour, and generation defects. Choose "same" only if you cannot see a difference. '
        "Some pairs are verification questions with a clear answer."
    )

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "conditions": list(self.conditions)})

    @classmethod
    def from_json(cls, text: str) -> StudySettings:
        data = json.loads(text)
        return cls(**{**data, "conditions": tuple(data["conditions"])})


@dataclass(frozen=True)
class Assignment:
    """A pair shown to a participant: image ids left and right, and where the participant stands."""

    id: int
    left_image: int
    right_image: int
    position: int
    total: int


def open_database(url: str, create: bool = True) -> sa.Engine:
    """An engine on ``url`` (``sqlite:///study.sqlite``, ``postgresql://...``, or a plain path for SQLite) with
    the study's tables created; SQLite in WAL mode with a busy timeout, so concurrent requests wait, not fail.
    Without ``create``, a SQLite file that does not exist is refused (a mistyped path is not a new, empty study)."""
    if "://" not in url:
        url = f"sqlite:///{url}"
    scheme, rest = url.split("://", 1)
    if not create and scheme.startswith("sqlite") and rest.strip("/") and not Path(rest[1:]).exists():
        raise StudyError(
            f"database {rest[1:]} does not exist; check the path, or make a study first with `iqa-adapter study create`"
        )
    if scheme in ("postgresql", "postgres") and not _importable("psycopg2") and _importable("psycopg"):
        url = f"postgresql+psycopg://{rest}"  # SQLAlchemy's default PostgreSQL driver is psycopg2; use psycopg 3
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ModuleNotFoundError) as error:
        raise StudyError(
            f"cannot open database {url!r}: {error}; give a file path (SQLite) or a SQLAlchemy URL such as "
            "postgresql+psycopg://user@host/db with its driver installed"
        ) from None
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_settings(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL: a committed vote survives a kill of the server
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    try:
        metadata.create_all(engine)
    except sa.exc.DBAPIError as error:  # unreachable server, not a database file, a folder, no permission
        raise StudyError(
            f"cannot open database {url!r}: {error_first_line(error.orig)}; give a SQLite file path or the URL of a "
            "running database server you can reach"
        ) from None
    return engine


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class StudyStore:
    """Read and write the studies of one database (thread-safe: one connection per call)."""

    def __init__(self, url: str, create: bool = True) -> None:
        """``create``: make the database when it does not exist (``study create``); else refuse a missing one."""
        self.url = url
        self.engine = open_database(url, create)
        self._serve_lock = threading.Lock()  # one pair choice at a time per server: even loads, fewer retries

    # ------------------------------------------------------------ building
    def check_name_free(self, name: str) -> None:
        """Refuse, before any work, a study name the database already holds."""
        if name in self.study_names():
            raise StudyError(f"the database already holds a study named {name!r}; choose another --name")

    def create_study(self, connection, name: str, settings: StudySettings) -> int:
        """A new, empty study in ``connection``'s transaction (so that a failed build leaves no study behind)."""
        return connection.execute(
            studies.insert().values(name=name, created=time.time(), settings=settings.to_json())
        ).inserted_primary_key[0]

    def add_image(self, connection, study_id: int, condition: str, key: str, source: str, data: bytes, media_type: str):
        return connection.execute(
            images.insert().values(
                study_id=study_id, condition=condition, key=key, source=source, data=data, media_type=media_type
            )
        ).inserted_primary_key[0]

    def add_pair(self, connection, study_id: int, a: tuple[int, str], b: tuple[int, str], key: str, expected=None):
        """A pair of images ``(image id, condition)``; ``expected`` ("a"/"b") makes it an attention check."""
        connection.execute(
            pairs.insert().values(
                study_id=study_id,
                image_a=a[0],
                condition_a=a[1],
                image_b=b[0],
                condition_b=b[1],
                key=key,
                attention=expected is not None,
                expected=expected,
            )
        )

    # ------------------------------------------------------------ reading
    def study(self, name: str) -> tuple[int, StudySettings]:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(studies.c.id, studies.c.settings).where(studies.c.name == name)).first()
        if row is None:
            raise UnknownStudyError(
                f"no study named {name!r} in {self.url}; known: {', '.join(self.study_names()) or 'none'}"
            )
        return row.id, StudySettings.from_json(row.settings)

    def study_names(self) -> list[str]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.select(studies.c.name).order_by(studies.c.id)).scalars())

    def image(self, study_id: int, image_id: int) -> tuple[bytes, str]:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(images.c.data, images.c.media_type).where(
                    images.c.id == image_id, images.c.study_id == study_id
                )
            ).first()
        if row is None:
            raise StudyError(f"no image {image_id} in this study")
        return row.data, row.media_type

    def counts(self, study_id: int) -> dict:
        """Pairs, attention checks, participants, votes, and pairs that reached ``votes_per_pair``."""
        _, settings = self.study_by_id(study_id)
        with self.engine.connect() as connection:
            by_kind = self._pairs_by_kind(connection, study_id)
            votes_per_pair = (
                sa.select(pairs.c.id, sa.func.count(assignments.c.choice).label("votes"))
                .select_from(pairs.outerjoin(assignments, assignments.c.pair_id == pairs.c.id))
                .where(pairs.c.study_id == study_id, pairs.c.attention.is_(False))
                .group_by(pairs.c.id)
                .subquery()
            )
            complete = connection.execute(
                sa.select(sa.func.count()).where(votes_per_pair.c.votes >= settings.votes_per_pair)
            ).scalar_one()
            people = connection.execute(
                sa.select(sa.func.count()).where(participants.c.study_id == study_id)
            ).scalar_one()
        return {
            "pairs": by_kind.get(False, 0),
            "attention_pairs": by_kind.get(True, 0),
            "participants": people,
            "votes": self.vote_count(study_id),
            "pairs_with_enough_votes": complete,
        }

    def vote_count(self, study_id: int) -> int:
        """Votes stored so far (attention checks included)."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count())
                .select_from(assignments.join(pairs, assignments.c.pair_id == pairs.c.id))
                .where(pairs.c.study_id == study_id, assignments.c.choice.is_not(None))
            ).scalar_one()

    @staticmethod
    def _pairs_by_kind(connection, study_id: int) -> dict[bool, int]:
        """``{False: compared pairs, True: attention-check pairs}`` of the study (a kind it lacks is absent)."""
        rows = connection.execute(
            sa.select(pairs.c.attention, sa.func.count())
            .where(pairs.c.study_id == study_id)
            .group_by(pairs.c.attention)
        )
        return {bool(attention): count for attention, count in rows}

    def study_by_id(self, study_id: int) -> tuple[str, StudySettings]:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(studies.c.name, studies.c.settings).where(studies.c.id == study_id)
            ).one()
        return row.name, StudySettings.from_json(row.settings)

    def votes(self, study_id: int) -> list[dict]:
        """Every vote of the study, one dict each (participant, pair, conditions, sides, choice, winner, times)."""
        query = (
            sa.select(
                participants.c.external_id.label("participant"),
                assignments.c.position,
                pairs.c.id.label("pair"),
                pairs.c.key,
                pairs.c.condition_a,
                pairs.c.condition_b,
                pairs.c.attention,
                pairs.c.expected,
                assignments.c.left,
                assignments.c.choice,
                assignments.c.shown,
                assignments.c.voted,
            )
            .select_from(
                assignments.join(pairs, assignments.c.pair_id == pairs.c.id).join(
                    participants, assignments.c.participant_id == participants.c.id
                )
            )
            .where(pairs.c.study_id == study_id, assignments.c.choice.is_not(None))
            .order_by(assignments.c.voted, assignments.c.id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        out = []
        for row in rows:
            row = dict(row)
            row["attention"] = bool(row["attention"])
            row["winner"] = winner_of(row["choice"], row["left"])
            out.append(row)
        return out

    # ------------------------------------------------------------ serving
    def participant(self, study_id: int, external_id: str, source: str) -> int:
        """The participant's row id, created on first sight."""
        if not external_id or len(external_id) > 200:
            raise StudyError("a participant id must be 1 to 200 characters")
        with self.engine.connect() as connection:
            found = self._participant_row(connection, study_id, external_id)
        if found is not None:
            return found
        try:
            with self.engine.begin() as connection:
                return connection.execute(
                    participants.insert().values(
                        study_id=study_id, external_id=external_id, source=source, created=time.time()
                    )
                ).inserted_primary_key[0]
        except IntegrityError:  # the same participant's other request created it first
            with self.engine.connect() as connection:
                return self._participant_row(connection, study_id, external_id)

    @staticmethod
    def _participant_row(connection, study_id: int, external_id: str) -> int | None:
        return connection.execute(
            sa.select(participants.c.id).where(
                participants.c.study_id == study_id, participants.c.external_id == external_id
            )
        ).scalar()

    def next_assignment(self, study_id: int, participant_id: int) -> Assignment | None:
        """The participant's open assignment, or a new one; None when the participant has finished."""
        _, settings = self.study_by_id(study_id)
        for _attempt in range(5):
            with self._serve_lock:
                with self.engine.connect() as connection:
                    total = self._sequence_length(connection, study_id, settings)
                    current = self._open_assignment(connection, participant_id)
                    if current is not None:
                        return self._describe(connection, current, total)
                    done = connection.execute(
                        sa.select(sa.func.count()).where(assignments.c.participant_id == participant_id)
                    ).scalar_one()
                    if done >= total:
                        return None
                    attention = done in self._check_positions(participant_id, settings, total)
                    pair_id = self._least_served_pair(connection, study_id, participant_id, attention)
                    if pair_id is None and attention:  # no check left for this participant: a compared pair
                        pair_id = self._least_served_pair(connection, study_id, participant_id, False)
                if pair_id is None:
                    return None
                try:
                    with self.engine.begin() as connection:
                        connection.execute(
                            assignments.insert().values(
                                participant_id=participant_id,
                                pair_id=pair_id,
                                position=done,
                                left=random.choice("ab"),
                                shown=time.time(),
                            )
                        )
                except IntegrityError:  # another server or request served this participant first: read it
                    continue
        raise StudyError("too many concurrent requests for this participant; try again")

    def vote(self, participant_id: int, assignment_id: int, choice: str) -> None:
        """Record ``choice`` on the participant's assignment, once: a repeated vote on it changes nothing."""
        if choice not in CHOICES:
            raise StudyError(f"a vote is one of {', '.join(CHOICES)}, got {choice!r}")
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(assignments.c.choice).where(
                    assignments.c.id == assignment_id, assignments.c.participant_id == participant_id
                )
            ).first()
            if row is None:
                raise StudyError(f"assignment {assignment_id} was not shown to this participant")
            if row.choice is not None:
                return  # already stored (a retried request): exactly once
            connection.execute(
                assignments.update()
                .where(assignments.c.id == assignment_id, assignments.c.choice.is_(None))
                .values(choice=choice, voted=time.time())
            )

    @staticmethod
    def _open_assignment(connection, participant_id: int):
        return connection.execute(
            sa.select(assignments).where(assignments.c.participant_id == participant_id, assignments.c.choice.is_(None))
        ).first()

    @staticmethod
    def _describe(connection, row, total: int) -> Assignment:
        pair = connection.execute(sa.select(pairs.c.image_a, pairs.c.image_b).where(pairs.c.id == row.pair_id)).one()
        left, right = (pair.image_a, pair.image_b) if row.left == "a" else (pair.image_b, pair.image_a)
        return Assignment(row.id, left, right, row.position, total)

    @staticmethod
    def _sequence_length(connection, study_id: int, settings: StudySettings) -> int:
        """Pairs one participant is shown: the settings' numbers, or fewer when the study has fewer pairs."""
        available = StudyStore._pairs_by_kind(connection, study_id)
        compared = min(settings.pairs_per_participant, available.get(False, 0))
        checks = min(settings.attention_checks, available.get(True, 0))
        return compared + checks

    @staticmethod
    def _check_positions(participant_id: int, settings: StudySettings, total: int) -> set[int]:
        """Where the participant's attention checks fall: drawn from the participant id, never first."""
        checks = min(settings.attention_checks, max(total - 1, 0))
        seed = int.from_bytes(hashlib.sha256(str(participant_id).encode()).digest()[:8], "big")
        return set(random.Random(seed).sample(range(1, total), checks)) if checks else set()

    @staticmethod
    def _least_served_pair(connection, study_id: int, participant_id: int, attention: bool) -> int | None:
        """A pair of the kind asked for, not yet shown to the participant, with the fewest votes plus recent open
        assignments (ties broken at random)."""
        recent = time.time() - OPEN_ASSIGNMENT_SECONDS
        load = (  # votes and recent showings per pair of this study
            sa.select(assignments.c.pair_id, sa.func.count().label("load"))
            .select_from(assignments.join(pairs, assignments.c.pair_id == pairs.c.id))
            .where(
                pairs.c.study_id == study_id,
                pairs.c.attention.is_(attention),
                sa.or_(assignments.c.choice.is_not(None), assignments.c.shown > recent),
            )
            .group_by(assignments.c.pair_id)
            .subquery()
        )
        seen = sa.select(assignments.c.pair_id).where(assignments.c.participant_id == participant_id)
        query = (
            sa.select(pairs.c.id)
            .select_from(pairs.outerjoin(load, load.c.pair_id == pairs.c.id))
            .where(pairs.c.study_id == study_id, pairs.c.attention.is_(attention), pairs.c.id.not_in(seen))
            .order_by(sa.func.coalesce(load.c.load, 0), sa.func.random())
            .limit(1)
        )
        return connection.execute(query).scalar()


def winner_of(choice: str, left: str) -> str:
    """``"a"``, ``"b"`` or ``"same"`` from a vote for a side and the side image a was shown on."""
    if choice == "same":
        return "same"
    right = "b" if left == "a" else "a"
    return left if choice == "left" else right
