"""Side-by-side preference studies: win rates as the paper defines them (section 4.3.1, Figures 3b and 3c).

Each compared pair of images (two conditions, the same prompt and seed) gets votes for the left condition,
the right one, or "same". A pair's winner is the condition with more votes than each of the other two
options; otherwise the pair is a draw. Then, per condition:

* ``win_rate``: the share of its pairs it won (the paper's "overall win rate ... a share of image pairs on which
  it achieved the majority of votes");
* ``vote_share``: the mean over its pairs of the share of votes it got;

and per ordered couple of conditions ``pairwise[a][b]``: the share of the a-vs-b pairs that a won (so
``pairwise[a][b] + pairwise[b][a] + draws[a][b] = 1``, Figure 3c).

:func:`simulate_votes` stands in for people where there are none (the toy world): each of ``participants``
judges sees a judge model's score of each image plus their own Gaussian noise, and says "same" when the two
look closer than ``same_margin``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairVotes:
    """The votes on one pair of images: condition ``a`` against condition ``b``."""

    a: str
    b: str
    votes_a: int
    votes_b: int
    same: int = 0

    @property
    def total(self) -> int:
        return self.votes_a + self.votes_b + self.same

    def winner(self) -> str | None:
        """The condition with more votes than each other option, or None (a draw)."""
        if self.votes_a > max(self.votes_b, self.same):
            return self.a
        if self.votes_b > max(self.votes_a, self.same):
            return self.b
        return None


def win_rates(pairs: Sequence[PairVotes]) -> dict:
    """``{"win_rate": {c}, "vote_share": {c}, "pairwise": {a: {b}}, "draws": {a: {b}}, "pairs": {c}}`` over
    ``pairs`` (pairs without votes are left out and counted in ``"unvoted"``)."""
    won, share, count = defaultdict(float), defaultdict(float), defaultdict(int)
    pairwise, couples = defaultdict(lambda: defaultdict(float)), defaultdict(int)
    unvoted = 0
    for pair in pairs:
        if pair.a == pair.b:
            raise ValueError(f"a pair compares two conditions, got {pair.a!r} twice")
        if pair.total == 0:
            unvoted += 1
            continue
        winner = pair.winner()
        for condition, votes in ((pair.a, pair.votes_a), (pair.b, pair.votes_b)):
            count[condition] += 1
            share[condition] += votes / pair.total
            won[condition] += winner == condition
        couples[pair.a, pair.b] += 1
        couples[pair.b, pair.a] += 1
        if winner is not None:
            loser = pair.b if winner == pair.a else pair.a
            pairwise[winner][loser] += 1
    conditions = sorted(count)
    result = {
        "win_rate": {c: won[c] / count[c] for c in conditions},
        "vote_share": {c: share[c] / count[c] for c in conditions},
        "pairwise": {},
        "draws": {},
        "pairs": dict(count),
        "unvoted": unvoted,
    }
    for a in conditions:
        result["pairwise"][a] = {b: pairwise[a][b] / couples[a, b] for b in conditions if couples[a, b]}
        result["draws"][a] = {
            b: 1 - (pairwise[a][b] + pairwise[b][a]) / couples[a, b] for b in conditions if couples[a, b]
        }
    return result


def simulate_votes(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    participants: int = 12,
    noise: float = 3.0,
    same_margin: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Votes ``(for a, for b, same)`` per pair from judge scores (higher = better) of the two images: each
    participant adds Gaussian noise (standard deviation ``noise``) to each score and votes "same" when the
    noisy scores differ by less than ``same_margin``."""
    scores_a, scores_b = np.asarray(scores_a, float), np.asarray(scores_b, float)
    if scores_a.shape != scores_b.shape or scores_a.ndim != 1:
        raise ValueError(
            f"simulate_votes: two equal-length 1-d score arrays, got {scores_a.shape} and {scores_b.shape}"
        )
    if participants < 1 or noise < 0 or same_margin < 0:
        raise ValueError("simulate_votes: participants >= 1, noise >= 0 and same_margin >= 0")
    rng = np.random.default_rng(seed)
    difference = (
        scores_a[:, None]
        + rng.normal(0, noise, (len(scores_a), participants))
        - scores_b[:, None]
        - rng.normal(0, noise, (len(scores_b), participants))
    )
    same = np.abs(difference) < same_margin
    return (((difference > 0) & ~same).sum(axis=1), ((difference < 0) & ~same).sum(axis=1), same.sum(axis=1))


def bradley_terry(outcomes: Sequence[tuple[str, str, float]], prior: float = 0.5, iterations: int = 1000) -> dict:
    """Bradley-Terry log-strengths ``{condition: s}`` (mean 0) from single votes ``(a, b, score of a)``, the score
    1 when a won, 0 when b won and 0.5 for "same" (a tie is half a win each).

    P(a beats b) = 1 / (1 + exp(s_b - s_a)). Fitted by Hunter's MM algorithm (2004) with ``prior`` virtual
    ties between every two conditions that met, so that a condition that won every vote gets a finite score.
    """
    conditions = sorted({condition for a, b, _ in outcomes for condition in (a, b)})
    if not conditions:
        return {}
    index = {condition: position for position, condition in enumerate(conditions)}
    wins = np.zeros((len(conditions), len(conditions)))
    for a, b, score in outcomes:
        if a == b or not 0 <= score <= 1:
            raise ValueError(f"a vote is (a, b, score of a in [0, 1]) with a != b, got {(a, b, score)}")
        wins[index[a], index[b]] += score
        wins[index[b], index[a]] += 1 - score
    met = (wins + wins.T) > 0
    wins += prior * met
    games = wins + wins.T
    strength = np.ones(len(conditions))
    for _ in range(iterations):
        denominators = (games / (strength[:, None] + strength[None, :])).sum(axis=1)
        updated = wins.sum(axis=1) / np.where(denominators > 0, denominators, 1)
        updated = np.where(denominators > 0, updated, 1.0)
        updated /= np.exp(np.log(updated).mean())
        if np.abs(updated - strength).max() < 1e-10:
            strength = updated
            break
        strength = updated
    scores = np.log(strength)
    return {condition: float(scores[index[condition]] - scores.mean()) for condition in conditions}


def bootstrap_bradley_terry(
    outcomes: Sequence[tuple[str, str, float]],
    groups: Sequence[str],
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Bootstrap intervals of :func:`bradley_terry`: ``{condition: (low, high)}`` at ``level``.

    Resamples the groups (``groups[i]`` is the participant of ``outcomes[i]``) with replacement, so that the
    interval covers the spread between people, not only between their votes.
    """
    if len(groups) != len(outcomes):
        raise ValueError(f"one group per vote: {len(groups)} groups for {len(outcomes)} votes")
    by_group: dict[str, list] = defaultdict(list)
    for group, outcome in zip(groups, outcomes):
        by_group[group].append(outcome)
    names = list(by_group)
    conditions = sorted({condition for a, b, _ in outcomes for condition in (a, b)})
    if not names:
        return {}
    rng = np.random.default_rng(seed)
    samples = {condition: [] for condition in conditions}
    for _ in range(rounds):
        drawn = rng.integers(0, len(names), len(names))
        scores = bradley_terry([outcome for pick in drawn for outcome in by_group[names[pick]]])
        for condition in conditions:
            samples[condition].append(scores.get(condition, np.nan))
    tail = (1 - level) / 2 * 100
    return {
        condition: tuple(float(value) for value in np.nanpercentile(values, [tail, 100 - tail]))
        for condition, values in samples.items()
    }
