import math

import pytest

from conftest import two_metrics
from iqa_adapter import MetricStats, QualityTargetError, cc3m_stats, load_stats_table
from iqa_adapter.targets import parse_quality_assignment, target_to_z, targets_to_z


def test_percentile_z_and_raw_targets_by_hand():
    sharp = two_metrics()[0]
    assert target_to_z("p99", sharp) == pytest.approx((0.8 - 0.5) / 0.1)
    assert target_to_z("p50", sharp) == pytest.approx(0.0)
    # p25 lies between p1 (0.2) and p50 (0.5): 0.2 + 0.3 * 24/49
    assert target_to_z("p25", sharp) == pytest.approx((0.2 + 0.3 * 24 / 49 - 0.5) / 0.1)
    assert target_to_z("z2.5", sharp) == 2.5
    assert target_to_z("z-1", sharp) == -1.0
    assert target_to_z("0.73", sharp) == pytest.approx(2.3)
    assert target_to_z(0.73, sharp) == pytest.approx(2.3)


def test_lower_is_better_percentiles_are_in_quality_order():
    piqe = MetricStats(
        "piqe", mean=40.0, std=10.0, percentiles={1.0: 10.0, 50.0: 40.0, 99.0: 80.0}, higher_is_better=False
    )
    # p99 quality = better than 99 % of images = the raw 1st percentile of a lower-is-better metric
    assert target_to_z("p99", piqe) == pytest.approx((10.0 - 40.0) / 10.0)
    assert target_to_z("p1", piqe) == pytest.approx((80.0 - 40.0) / 10.0)


def test_cc3m_table_matches_reference_figures():
    stats = cc3m_stats()
    assert len(stats) == 21 and not any(name.endswith("_normalized") for name in stats)
    topiq = stats["topiq_nr"]
    assert topiq.mean == pytest.approx(0.5492, abs=1e-4) and topiq.std == pytest.approx(0.0988, abs=1e-4)
    assert topiq.raw_from_percentile(99) == pytest.approx(0.7479, abs=1e-4)
    assert target_to_z("p99", topiq) == pytest.approx(2.011, abs=1e-3)


def test_stats_from_scores_and_table_round_trip(tmp_path):
    scores = [float(v) for v in range(101)]
    stats = MetricStats.from_scores("m", scores + [math.nan, math.inf])
    assert stats.mean == pytest.approx(50.0) and stats.percentiles[90.0] == pytest.approx(90.0)
    assert MetricStats.from_dict(stats.to_dict()) == stats
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nx,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_stats_table(bad)


@pytest.mark.parametrize(
    "target, message",
    [
        ("p100", "valid percentiles are p1 to p99"),
        ("p0.5", "outside the adapter's table"),
        ("best", "write p<percentile>"),
        ("pxx", "write p<percentile>"),
        ("nan", "not a finite number"),
    ],
)
def test_bad_targets_explain_what_is_valid(target, message):
    with pytest.raises(QualityTargetError, match=message):
        target_to_z(target, two_metrics()[0])


def test_unknown_and_missing_metrics_list_the_valid_ones():
    metrics = two_metrics()
    with pytest.raises(QualityTargetError, match=r"unknown metric\(s\) 'topiq'.*conditioned on: sharp, aes"):
        targets_to_z({"topiq": "p99", "sharp": "p1", "aes": "p1"}, metrics)
    with pytest.raises(QualityTargetError, match=r"missing quality target for 'aes'.*--quality aes=p50"):
        targets_to_z({"sharp": "p99"}, metrics)
    assert targets_to_z({"aes": "z1", "sharp": "z-1"}, metrics) == [-1.0, 1.0]


def test_cli_assignment_parsing():
    assert parse_quality_assignment("topiq_nr=p99") == ("topiq_nr", "p99")
    with pytest.raises(QualityTargetError, match="METRIC=TARGET"):
        parse_quality_assignment("topiq_nr")


def test_default_targets_fill_the_metrics_a_call_leaves_out():
    from iqa_adapter.targets import targets_to_z

    metrics = [
        MetricStats("a", mean=0.0, std=1.0, percentiles={50.0: 0.5}),
        MetricStats("b", mean=0.0, std=2.0, percentiles={50.0: 1.0}),
    ]
    assert targets_to_z({"a": "z1.0"}, metrics, {"b": "p50"}) == [1.0, 0.5]
    assert targets_to_z({"a": "z1.0", "b": "z3.0"}, metrics, {"b": "p50"}) == [1.0, 3.0]
    with pytest.raises(QualityTargetError, match="missing quality target for 'b'"):
        targets_to_z({"a": "z1.0"}, metrics)
