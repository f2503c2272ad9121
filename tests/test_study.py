"""The subjective study: building it from generated images, serving pairs, storing votes, analysing them."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sqlalchemy", reason="the study needs the app extra: pip install 'iqa-adapter[app]'")

from app_fixtures import condition_folders  # noqa: E402
from iqa_adapter.app.store import StudyError, StudySettings, StudyStore, winner_of  # noqa: E402
from iqa_adapter.app.study import DEGRADED, create_study, failed_checks, study_report, votes_csv  # noqa: E402
from iqa_adapter.cli import main  # noqa: E402
from iqa_adapter.evaluation.preference import bootstrap_bradley_terry, bradley_terry  # noqa: E402

CONDITIONS = ("base", "toy/p1", "toy/p99")


def new_study(tmp_path, keys=4, name="s", **settings):
    root = condition_folders(tmp_path / "eval", list(CONDITIONS), keys)
    store = StudyStore(str(tmp_path / "study.sqlite"))
    options = {"pairs_per_participant": 4, "attention_checks": 1, "votes_per_pair": 2, **settings}
    counts = create_study(store, name, root, StudySettings(conditions=CONDITIONS, **options), attention_pairs=2)
    return store, root, counts


def vote_through(store, study_id, participant, choose):
    """Serve and vote a participant's whole sequence; ``choose(assignment, pair row) -> choice``."""
    person = store.participant(study_id, participant, "participant")
    served = []
    while (assignment := store.next_assignment(study_id, person)) is not None:
        served.append(assignment)
        store.vote(person, assignment.id, choose(assignment))
    return person, served


def image_conditions(store, study_id):
    import sqlalchemy as sa

    from iqa_adapter.app.store import images

    with store.engine.connect() as connection:
        rows = connection.execute(sa.select(images.c.id, images.c.condition).where(images.c.study_id == study_id))
        return {row.id: row.condition for row in rows}


# ---------------------------------------------------------------- building


def test_a_study_holds_every_pair_of_the_conditions_on_the_shared_images(tmp_path):
    store, root, counts = new_study(tmp_path, keys=5)
    assert counts == {"study": "s", "images": 15, "pairs": 15, "attention_pairs": 2, "keys": 5, "skipped": []}
    study_id, settings = store.study("s")
    assert settings.conditions == CONDITIONS
    stored = image_conditions(store, study_id)
    assert sorted(stored.values()).count(DEGRADED) == 2
    # the stored bytes are the files' bytes
    data, media = store.image(study_id, next(i for i, c in stored.items() if c == "toy/p99"))
    assert media == "image/png" and data in {path.read_bytes() for path in (root / "images/toy/p99").iterdir()}
    # pairs: 5 keys x 3 couples, each couple once per key
    votes = store.counts(study_id)
    assert votes["pairs"] == 15 and votes["attention_pairs"] == 2 and votes["votes"] == 0


def test_images_missing_in_a_condition_are_left_out_and_pairs_outputs_work(tmp_path):
    root = condition_folders(tmp_path / "pairs", ["hq", "lq"], 3)
    (root / "images" / "lq" / "00002_s0.png").unlink()
    store = StudyStore(str(tmp_path / "db.sqlite"))
    counts = create_study(store, "p", root / "images", StudySettings(conditions=("hq", "lq")), attention_pairs=1)
    assert counts["keys"] == 2 and counts["pairs"] == 2


@pytest.mark.parametrize(
    "conditions, message",
    [
        (("base", "nope"), r"conditions \['nope'\] have no folder.*folders there are: base, toy/p1, toy/p99"),
        (("base",), "at least two conditions"),
    ],
)
def test_bad_conditions_are_refused_with_the_folders_there(tmp_path, conditions, message):
    root = condition_folders(tmp_path / "eval", list(CONDITIONS), 2)
    store = StudyStore(str(tmp_path / "db.sqlite"))
    with pytest.raises(StudyError, match=message):
        create_study(store, "s", root, StudySettings(conditions=conditions))


def test_unreadable_images_leave_their_prompt_and_seed_out_and_are_listed(tmp_path):
    root = condition_folders(tmp_path / "eval", list(CONDITIONS), 4)
    truncated = root / "images" / "toy/p99" / "00001_s0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    (root / "images" / "base" / "00002_s0.png").write_bytes(b"")
    store = StudyStore(str(tmp_path / "db.sqlite"))
    counts = create_study(store, "s", root, StudySettings(conditions=CONDITIONS), attention_pairs=4)
    assert counts["keys"] == 2 and counts["pairs"] == 6 and counts["attention_pairs"] == 2
    assert [(entry["key"], entry["condition"]) for entry in counts["skipped"]] == [
        ("00001_s0.png", "toy/p99"),
        ("00002_s0.png", "base"),
    ]
    assert "empty file" in counts["skipped"][1]["reason"]
    for path in (root / "images" / "base").iterdir():  # nothing but readable files is left: none to build from
        path.write_bytes(b"not an image")
    with pytest.raises(StudyError, match="no prompt and seed has a readable image in every condition"):
        create_study(store, "t", root, StudySettings(conditions=CONDITIONS))
    assert store.study_names() == ["s"]  # the failed build left no study behind


@pytest.mark.parametrize("make", [lambda path: path.mkdir(), lambda path: path.write_text("not a database" * 100)])
def test_a_database_that_cannot_open_is_one_line(tmp_path, make):
    make(tmp_path / "db.sqlite")
    with pytest.raises(StudyError, match="cannot open database .*db.sqlite"):
        StudyStore(str(tmp_path / "db.sqlite"))


def test_a_study_name_is_taken_once(tmp_path):
    store, root, _ = new_study(tmp_path)
    with pytest.raises(StudyError, match="already holds a study named 's'"):
        create_study(store, "s", root, StudySettings(conditions=CONDITIONS))


# ---------------------------------------------------------------- serving


def test_a_participant_gets_the_settings_number_of_pairs_never_one_twice(tmp_path):
    store, _, _ = new_study(tmp_path, keys=4, pairs_per_participant=5, attention_checks=2)
    study_id, _ = store.study("s")
    conditions = image_conditions(store, study_id)
    _, served = vote_through(store, study_id, "alice", lambda a: "left")
    assert len(served) == 7 and [a.position for a in served] == list(range(7)) and {a.total for a in served} == {7}
    shown = [frozenset((a.left_image, a.right_image)) for a in served]
    assert len(set(shown)) == 7
    checks = [a for a in served if DEGRADED in (conditions[a.left_image], conditions[a.right_image])]
    assert len(checks) == 2 and served[0] not in checks  # checks are never the first pair
    # the sides are randomised: over many participants both images of a pair appear on the left
    sides = set()
    for number in range(12):
        for assignment in vote_through(store, study_id, f"p{number}", lambda a: "same")[1]:
            sides.add(conditions[assignment.left_image])
    assert {"base", "toy/p1", "toy/p99"} <= sides


def test_the_open_pair_is_served_again_until_voted_and_a_vote_counts_once(tmp_path):
    store, _, _ = new_study(tmp_path)
    study_id, _ = store.study("s")
    person = store.participant(study_id, "bob", "PROLIFIC_PID")
    assert store.participant(study_id, "bob", "PROLIFIC_PID") == person
    first = store.next_assignment(study_id, person)
    assert store.next_assignment(study_id, person) == first  # a reload shows the same pair
    store.vote(person, first.id, "right")
    store.vote(person, first.id, "left")  # a retried or late request changes nothing
    second = store.next_assignment(study_id, person)
    assert second.id != first.id and second.position == 1
    votes = store.votes(study_id)
    assert len(votes) == 1 and votes[0]["choice"] == "right" and votes[0]["participant"] == "bob"
    with pytest.raises(StudyError, match="one of left, right, same"):
        store.vote(person, second.id, "both")
    other = store.participant(study_id, "carol", "participant")
    with pytest.raises(StudyError, match="was not shown to this participant"):
        store.vote(other, second.id, "left")
    with pytest.raises(StudyError, match="no study named 'x'.*known: s"):
        store.study("x")


def test_pairs_fill_evenly_before_any_gets_more_votes(tmp_path):
    store, _, _ = new_study(tmp_path, keys=4, pairs_per_participant=5, attention_checks=0)
    study_id, _ = store.study("s")
    for number in range(6):  # 30 votes on 12 pairs: every pair 2 or 3
        vote_through(store, study_id, f"p{number}", lambda a: "left")
    per_pair = {}
    for vote in store.votes(study_id):
        per_pair[vote["pair"]] = per_pair.get(vote["pair"], 0) + 1
    assert len(per_pair) == 12 and set(per_pair.values()) <= {2, 3}
    assert store.counts(study_id)["pairs_with_enough_votes"] == 12


def test_winner_of_a_vote_follows_the_side_image_a_was_on():
    assert [winner_of(c, "a") for c in ("left", "right", "same")] == ["a", "b", "same"]
    assert [winner_of(c, "b") for c in ("left", "right", "same")] == ["b", "a", "same"]


# ---------------------------------------------------------------- analysis


def test_the_report_counts_win_rates_by_hand_and_excludes_failed_checks(tmp_path):
    store, _, _ = new_study(tmp_path, keys=3, pairs_per_participant=9, attention_checks=1, votes_per_pair=1)
    study_id, _ = store.study("s")
    conditions = image_conditions(store, study_id)
    rank = {"toy/p99": 3, "base": 2, "toy/p1": 1, DEGRADED: 0}

    def prefer_quality(assignment):  # the better condition, and the clean image of a check
        left, right = rank[conditions[assignment.left_image]], rank[conditions[assignment.right_image]]
        return "left" if left > right else "right"

    def prefer_low(assignment):  # the worse one: fails the check
        left, right = rank[conditions[assignment.left_image]], rank[conditions[assignment.right_image]]
        return "left" if left < right else "right"

    for name in ("a", "b", "c"):
        vote_through(store, study_id, name, prefer_quality)
    vote_through(store, study_id, "cheater", prefer_low)
    report, votes = study_report(store, "s", bootstrap_rounds=50)
    assert report["participants"] == 4 and report["participants_excluded"] == 1 and report["participants_kept"] == 3
    assert report["votes"] == 40 and report["votes_kept"] == 27  # 3 x 9 compared pairs
    # every kept participant prefers p99 > base > p1 on each of the 9 pairs (3 keys x 3 couples)
    assert report["win_rate"] == {"base": 0.5, "toy/p1": 0.0, "toy/p99": 1.0}
    assert report["vote_share"] == {"base": 0.5, "toy/p1": 0.0, "toy/p99": 1.0}
    assert report["pairwise"]["toy/p99"] == {"base": 1.0, "toy/p1": 1.0}
    assert report["pairwise"]["toy/p1"] == {"base": 0.0, "toy/p99": 0.0}
    assert report["pairs_with_enough_votes"] == 9 and report["mean_votes_per_pair"] == 3.0
    bt = report["bradley_terry"]
    assert bt["toy/p99"]["score"] > bt["base"]["score"] > bt["toy/p1"]["score"]
    assert failed_checks(votes) == {"a": 0, "b": 0, "c": 0, "cheater": 1}
    rows = list(csv.DictReader(io.StringIO(votes_csv(votes))))
    assert len(rows) == 40 and {row["excluded"] for row in rows if row["participant"] == "cheater"} == {"True"}


def test_split_votes_make_draws_and_shares():
    from iqa_adapter.evaluation.preference import PairVotes, win_rates

    rates = win_rates([PairVotes("x", "y", 2, 2, 1), PairVotes("x", "y", 3, 1, 0)])
    assert rates["win_rate"] == {"x": 0.5, "y": 0.0}
    assert rates["vote_share"]["x"] == pytest.approx((2 / 5 + 3 / 4) / 2)
    assert rates["draws"]["x"]["y"] == 0.5


def test_bradley_terry_recovers_known_strengths_and_bootstrap_covers_them():
    rng = np.random.default_rng(1)
    truth = {"p1": -1.0, "base": 0.0, "p99": 1.0}
    outcomes, groups = [], []
    for index in range(4000):
        a, b = rng.choice(list(truth), 2, replace=False)
        outcomes.append((str(a), str(b), float(rng.random() < 1 / (1 + np.exp(truth[b] - truth[a])))))
        groups.append(f"person{index % 150}")
    scores = bradley_terry(outcomes)
    assert scores == pytest.approx(truth, abs=0.1)
    intervals = bootstrap_bradley_terry(outcomes, groups, rounds=200)
    for condition, (low, high) in intervals.items():
        assert low < truth[condition] < high and high - low < 0.3
    # ties are half a win each: all ties -> equal strengths; one-sided votes stay finite
    assert bradley_terry([("x", "y", 0.5)] * 10) == pytest.approx({"x": 0.0, "y": 0.0})
    lopsided = bradley_terry([("x", "y", 1.0)] * 20)
    assert np.isfinite(lopsided["x"]) and lopsided["x"] > 1
    with pytest.raises(ValueError, match="one group per vote"):
        bootstrap_bradley_terry(outcomes, groups[:-1])


# ---------------------------------------------------------------- command line


def test_study_commands_create_and_report(tmp_path, capsys):
    root = condition_folders(tmp_path / "eval", list(CONDITIONS), 3)
    database = str(tmp_path / "db.sqlite")
    create = ["study", "create", "--images", str(root), "--conditions", ",".join(CONDITIONS), "--database", database]
    assert main([*create, "--name", "mine", "--attention-pairs", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["pairs"] == 9
    store = StudyStore(database)
    study_id, _ = store.study("mine")
    conditions = image_conditions(store, study_id)
    vote_through(
        store,
        study_id,
        "a",
        lambda a: (
            "left"
            if conditions[a.left_image] in ("toy/p99", "base") and conditions[a.right_image] != "toy/p99"
            else "right"
        ),
    )
    assert main(["study", "report", "--database", database, "--out", str(tmp_path / "out"), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "1 participants kept" in printed and "toy/p99" in printed
    for name in ("report.json", "votes.csv", "win_rates.png", "pairwise.png", "bradley_terry.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # errors: one line, exit 2
    assert main([*create[:-2], "--database", database, "--name", "mine"]) == 2
    assert "already holds a study named 'mine'" in capsys.readouterr().err
    assert (
        main(["study", "create", "--images", str(tmp_path / "none"), "--conditions", "a,b", "--database", database])
        == 2
    )
    assert "is not a folder" in capsys.readouterr().err
    assert main([*create, "--name", "other", "--votes-per-pair", "0"]) == 2
    assert "--votes-per-pair: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main([*create, "--name", "other", "--max-images", "-1"]) == 2
    assert "--max-images: must be an integer >= 1, got -1" in capsys.readouterr().err
    assert main([*create, "--name", "other", "--attention-pairs", "nan"]) == 2
    assert "--attention-pairs: must be an integer, got 'nan'" in capsys.readouterr().err
    assert main(["app", "--no-generate", "--database", database, "--port", "99999"]) == 2
    assert "--port: must be an integer >= 0 and <= 65535, got 99999" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["app", "--no-generate", "--database", database, "--port", port]) == 2
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert main([*create[:-1], str(tmp_path), "--name", "other"]) == 2  # --database a folder
    assert "cannot open database" in capsys.readouterr().err
    assert main(["study", "report", "--database", database, "--name", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    missing = str(tmp_path / "typo.sqlite")  # a mistyped database is refused, not created empty
    assert main(["study", "report", "--database", missing, "--out", str(tmp_path / "o")]) == 2
    assert "typo.sqlite does not exist" in capsys.readouterr().err and not (tmp_path / "typo.sqlite").exists()
    assert main(["app", "--no-generate", "--database", missing]) == 2
    assert "typo.sqlite does not exist" in capsys.readouterr().err
    assert main(["study", "report", "--database", database, "--out", database]) == 2
    assert "is a file; give a folder for the report" in capsys.readouterr().err


def test_the_core_imports_and_the_app_command_names_the_extra_without_the_app_dependencies(tmp_path):
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("starlette", "uvicorn", "sqlalchemy"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("starlette", "uvicorn", "sqlalchemy") else real(name, *a)
import iqa_adapter
from iqa_adapter.cli import main
print("exit", main(["app", "--no-generate", "--database", "x.sqlite"]))
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "exit 2" in finished.stdout, finished.stderr
    assert "pip install 'iqa-adapter[app]'" in finished.stderr and "Traceback" not in finished.stderr


def test_a_figure_of_the_results_page_is_a_png_and_leaves_no_figure_open(tmp_path):
    import matplotlib.pyplot as plt

    from iqa_adapter.app.study import figure_png

    store, _, _ = new_study(tmp_path, keys=2, pairs_per_participant=6, attention_checks=0)
    study_id, _ = store.study("s")
    vote_through(store, study_id, "a", lambda a: "left")
    report, _ = study_report(store, "s", bootstrap_rounds=10)
    before = len(plt.get_fignums())
    for name in ("win_rates.png", "pairwise.png", "bradley_terry.png"):
        assert figure_png(report, name).startswith(b"\x89PNG")
    assert figure_png(report, "nope.png") is None
    assert len(plt.get_fignums()) == before
