"""Win rates as the paper defines them, and simulated participants."""

import numpy as np
import pytest

from iqa_adapter.evaluation.preference import PairVotes, simulate_votes, win_rates


def test_winner_needs_more_votes_than_each_other_option():
    assert PairVotes("a", "b", 6, 3, 1).winner() == "a"
    assert PairVotes("a", "b", 2, 5, 4).winner() == "b"
    assert PairVotes("a", "b", 4, 4, 2).winner() is None  # a tie between the two
    assert PairVotes("a", "b", 3, 2, 5).winner() is None  # "same" has the most votes
    assert PairVotes("a", "b", 4, 1, 4).winner() is None


def test_win_rates_by_hand():
    pairs = [
        PairVotes("p99", "base", 8, 2, 0),
        PairVotes("p99", "base", 3, 6, 1),
        PairVotes("base", "p99", 5, 5, 0),
        PairVotes("p99", "p1", 9, 0, 1),
        PairVotes("p1", "base", 0, 10, 0),
        PairVotes("p1", "p99", 0, 0, 0),
    ]
    result = win_rates(pairs)
    assert result["pairs"] == {"p99": 4, "base": 4, "p1": 2} and result["unvoted"] == 1
    assert result["win_rate"]["p99"] == pytest.approx(2 / 4)  # won 1 of 3 against base, and against p1
    assert result["win_rate"]["base"] == pytest.approx(2 / 4)
    assert result["win_rate"]["p1"] == 0
    assert result["vote_share"]["p99"] == pytest.approx((0.8 + 0.3 + 0.5 + 0.9) / 4)
    assert result["pairwise"]["p99"]["base"] == pytest.approx(1 / 3)
    assert result["pairwise"]["base"]["p99"] == pytest.approx(1 / 3)
    assert result["draws"]["p99"]["base"] == pytest.approx(1 / 3)
    for a, row in result["pairwise"].items():
        for b, value in row.items():
            assert value + result["pairwise"][b][a] + result["draws"][a][b] == pytest.approx(1)
    with pytest.raises(ValueError, match="two conditions"):
        win_rates([PairVotes("a", "a", 1, 0)])


def test_simulated_votes_follow_the_scores():
    rng = np.random.default_rng(0)
    better, worse = rng.normal(60, 5, 400), rng.normal(55, 5, 400)
    votes_a, votes_b, same = simulate_votes(better, worse, participants=12, noise=3.0, same_margin=1.0, seed=1)
    assert np.all(votes_a + votes_b + same == 12)
    assert votes_a.sum() > 2 * votes_b.sum() and same.sum() > 0
    again = simulate_votes(better, worse, participants=12, noise=3.0, same_margin=1.0, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((votes_a, votes_b, same), again))
    equal = simulate_votes(better, better, participants=200, noise=3.0, seed=2)
    assert abs(equal[0].sum() - equal[1].sum()) < 0.05 * equal[0].sum()  # no side is favoured
    with pytest.raises(ValueError, match="equal-length"):
        simulate_votes(better, worse[:3])
