"""The paper's side-by-side subjective study (section 4.3.1, supplement 15): build one from generated images,
and analyse its votes.

:func:`create_study` reads an ``evaluate`` output (``images/<condition>/<prompt>_s<seed>.png``) or a ``pairs``
output (``hq/NAME.png``, ``lq/NAME.png``), or any folder of condition folders holding the same file names, and
stores in a study database every pair of the chosen conditions on the same prompt and seed, plus attention
checks: an image of the first condition against a heavily degraded copy of it (downsampled eightfold and noisy),
whose right answer is the clean image.

:func:`study_report` computes, over the participants who passed the attention checks, the paper's overall win
rate (the share of its pairs on which a condition got the majority of votes) and mean share of votes per
condition, the pairwise win-rate matrix (Figures 3b and 3c), and Bradley-Terry scores with bootstrap intervals
over participants; :func:`write_study_report` writes them with every vote as CSV and the figures.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..distortions import distort
from ..evaluation.preference import PairVotes, bootstrap_bradley_terry, bradley_terry, win_rates
from ..images import open_image, rgb_tensor, to_pil_images
from ..io_utils import atomic_write
from ..validation import check_int
from .store import StudyError, StudySettings, StudyStore

IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
DEGRADED = "attention:degraded"
ATTENTION_PAIRS = 20  # attention-check pairs in a study (each participant gets its settings' number of them)
_FIGURES = threading.Lock()


def condition_images(root: str | Path) -> dict[str, dict[str, Path]]:
    """``{condition: {file name: path}}`` of a folder of condition folders (``images/`` of an evaluate output is
    looked in when present); a condition is the folder path below the root (``base``, ``toy/p99``, ``hq``)."""
    root = Path(root)
    if not root.is_dir():
        raise StudyError(f"--images {root} is not a folder; give an `evaluate` or `pairs` output folder")
    if (root / "images").is_dir():
        root = root / "images"
    found: dict[str, dict[str, Path]] = defaultdict(dict)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.parent != root:
            found[path.parent.relative_to(root).as_posix()][path.name] = path
    if not found:
        raise StudyError(f"no images in condition folders below {root} (expected <condition>/<name>.png)")
    return dict(found)


def create_study(
    store: StudyStore,
    name: str,
    images_root: str | Path,
    settings: StudySettings,
    attention_pairs: int = ATTENTION_PAIRS,
    max_keys: int | None = None,
    seed: int = 0,
) -> dict:
    """Store a study of every pair of ``settings.conditions`` on the images they share (the same file name:
    the same prompt and seed), at most ``max_keys`` of them, plus ``attention_pairs`` attention checks; returns
    the counts."""
    found = condition_images(images_root)
    if len(settings.conditions) < 2:
        raise StudyError(f"a study compares at least two conditions, got {list(settings.conditions)}")
    missing = [condition for condition in settings.conditions if condition not in found]
    if missing:
        raise StudyError(
            f"conditions {missing} have no folder below {images_root}; the folders there are: {', '.join(sorted(found))}"
        )
    keys = sorted(set.intersection(*(set(found[condition]) for condition in settings.conditions)))
    if not keys:
        raise StudyError(f"no image name is shared by every condition of {list(settings.conditions)}")
    if max_keys is not None:
        check_int("max_keys", max_keys, 1)
    store.check_name_free(name)
    skipped = unreadable_images(found, settings.conditions, keys)
    keys = [key for key in keys if key not in {key for key, _, _ in skipped}]
    if not keys:
        raise StudyError(f"no prompt and seed has a readable image in every condition; first problem: {skipped[0][2]}")
    rng = random.Random(seed)
    if max_keys is not None and len(keys) > max_keys:
        keys = sorted(rng.sample(keys, max_keys))
    with store.engine.begin() as connection:  # all or nothing: a failed build leaves no study behind
        study_id = store.create_study(connection, name, settings)
        ids = {}
        for condition in settings.conditions:
            for key in keys:
                path = found[condition][key]
                ids[condition, key] = store.add_image(
                    connection, study_id, condition, key, path.relative_to(images_root).as_posix(),
                    path.read_bytes(), IMAGE_SUFFIXES[path.suffix.lower()],
                )  # fmt: skip
        compared = 0
        for key in keys:
            for a, b in itertools.combinations(settings.conditions, 2):
                store.add_pair(connection, study_id, (ids[a, key], a), (ids[b, key], b), key)
                compared += 1
        clean_condition = settings.conditions[0]
        checks = rng.sample(keys, min(attention_pairs, len(keys)))
        for number, key in enumerate(checks):
            degraded = degraded_copy(found[clean_condition][key], seed=seed + number)
            degraded_id = store.add_image(connection, study_id, DEGRADED, key, f"degraded:{key}", degraded, "image/png")
            store.add_pair(
                connection, study_id, (ids[clean_condition, key], clean_condition), (degraded_id, DEGRADED), key, "a"
            )
    return {
        "study": name,
        "images": len(ids),
        "pairs": compared,
        "attention_pairs": len(checks),
        "keys": len(keys),
        "skipped": [{"key": key, "condition": condition, "reason": reason} for key, condition, reason in skipped],
    }


def unreadable_images(
    found: dict[str, dict[str, Path]], conditions: Sequence[str], keys: Sequence[str]
) -> list[tuple[str, str, str]]:
    """``(key, condition, reason)`` of every image of ``conditions`` that does not decode (empty, truncated, not an
    image, over PIL's pixel limit): its prompt and seed are left out of the study, never fatal."""
    skipped = []
    for key in keys:
        for condition in conditions:
            try:
                open_image(found[condition][key])
            except ValueError as error:
                skipped.append((key, condition, str(error)))
    return skipped


def degraded_copy(path: Path, seed: int = 0) -> bytes:
    """PNG bytes of the image downsampled eightfold and covered in strong noise: an obvious loss of quality at
    any size."""
    image = rgb_tensor(open_image(path))[None]
    generator = torch.Generator().manual_seed(seed)
    image = distort(distort(image, "downsample", 1.0), "gaussian_noise", 0.6, generator=generator)
    buffer = io.BytesIO()
    to_pil_images(image)[0].save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- analysis


def failed_checks(votes: Sequence[dict]) -> dict[str, int]:
    """Attention checks failed per participant (a vote for the degraded image, or "same")."""
    failed: dict[str, int] = defaultdict(int)
    for vote in votes:
        if vote["attention"]:
            failed[vote["participant"]] += vote["winner"] != vote["expected"]
    return failed


def study_report(store: StudyStore, name: str, bootstrap_rounds: int = 1000, seed: int = 0) -> tuple[dict, list]:
    """``(report, votes)``: the study's results over the participants who passed the attention checks (see the
    module), and every vote (excluded participants' included, marked)."""
    study_id, settings = store.study(name)
    votes = store.votes(study_id)
    failed = failed_checks(votes)
    excluded = {participant for participant, count in failed.items() if count > settings.max_failed_checks}
    for vote in votes:
        vote["excluded"] = vote["participant"] in excluded
    kept = [vote for vote in votes if not vote["excluded"] and not vote["attention"]]
    per_pair: dict[int, list] = {}
    for vote in kept:
        entry = per_pair.setdefault(vote["pair"], [vote["condition_a"], vote["condition_b"], 0, 0, 0])
        entry[2 + ("a", "b", "same").index(vote["winner"])] += 1
    rates = win_rates([PairVotes(a, b, votes_a, votes_b, same) for a, b, votes_a, votes_b, same in per_pair.values()])
    outcomes = [
        (vote["condition_a"], vote["condition_b"], {"a": 1.0, "b": 0.0, "same": 0.5}[vote["winner"]]) for vote in kept
    ]
    participants_all = {vote["participant"] for vote in votes}
    counts = store.counts(study_id)
    votes_on_pair = [sum(entry[2:]) for entry in per_pair.values()]
    report = {
        "study": name,
        "conditions": list(settings.conditions),
        "settings": json.loads(settings.to_json()),
        "participants": len(participants_all),
        "participants_excluded": len(excluded),
        "participants_kept": len(participants_all - excluded),
        "votes": len(votes),
        "votes_kept": len(kept),
        "pairs": counts["pairs"],
        "pairs_voted": len(per_pair),
        "pairs_with_enough_votes": sum(count >= settings.votes_per_pair for count in votes_on_pair),
        "mean_votes_per_pair": float(np.mean(votes_on_pair)) if votes_on_pair else 0.0,
        "win_rate": rates["win_rate"],
        "vote_share": rates["vote_share"],
        "pairwise": rates["pairwise"],
        "draws": rates["draws"],
        "bradley_terry": {},
    }
    if outcomes:
        scores = bradley_terry(outcomes)
        intervals = bootstrap_bradley_terry(
            outcomes, [vote["participant"] for vote in kept], rounds=bootstrap_rounds, seed=seed
        )
        report["bradley_terry"] = {
            condition: {"score": scores[condition], "low": intervals[condition][0], "high": intervals[condition][1]}
            for condition in scores
        }
    return report, votes


VOTE_COLUMNS = [
    "participant", "position", "pair", "key", "condition_a", "condition_b", "attention", "expected", "left",
    "choice", "winner", "excluded", "shown", "voted",
]  # fmt: skip


def votes_csv(votes: Sequence[dict]) -> str:
    """Every vote as CSV, one row each (:data:`VOTE_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, VOTE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(votes)
    return buffer.getvalue()


def write_study_report(report: dict, votes: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """``report.json``, ``votes.csv``, ``win_rates.png`` (Figure 3b), ``pairwise.png`` (3c) and
    ``bradley_terry.png`` in ``out_dir``; returns the paths."""
    from ..evaluation.figures import save_png

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "votes.csv"]
    atomic_write(written[0], lambda path: Path(path).write_text(json.dumps(report, indent=2)))
    atomic_write(written[1], lambda path: Path(path).write_text(votes_csv(votes)))
    if report["win_rate"]:
        for name, figure in study_figures(report).items():
            written.append(out_dir / name)
            save_png(figure, written[-1], out_dir)
    return written


def figure_png(report: dict, name: str) -> bytes | None:
    """PNG bytes of the figure ``name`` of :func:`study_figures` (None before the first votes or for another name);
    every figure made is closed."""
    from ..evaluation.figures import _pyplot

    with _FIGURES:  # pyplot is not thread-safe, and a results page asks for its figures at once
        figures = study_figures(report) if report["win_rate"] else {}
        try:
            if name not in figures:
                return None
            buffer = io.BytesIO()
            figures[name].savefig(buffer, format="png", dpi=110)
            return buffer.getvalue()
        finally:
            for figure in figures.values():
                _pyplot().close(figure)


def study_figures(report: dict) -> dict:
    """``{file name: matplotlib figure}`` of a study report: win rates and vote shares (3b), pairwise win rates
    (3c), Bradley-Terry scores with their intervals."""
    from ..evaluation.figures import preference_figures

    conditions = [condition for condition in report["conditions"] if condition in report["win_rate"]]
    who = f"{report['participants_kept']} participants, {report['votes_kept']} votes on {report['pairs_voted']} pairs"
    made = preference_figures(report, conditions, f"Side-by-side study ({who})", report["bradley_terry"])
    return {f"{name}.png": figure for name, figure in made.items()}
