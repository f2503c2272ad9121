import json

import numpy as np
import pytest

from iqa_adapter import IQAAdapter
from iqa_adapter.evaluation import EvaluationSettings, evaluate_adapter, oriented_spearman, relgain
from iqa_adapter.metrics import create_metric

from conftest import two_metrics


def test_relgain_by_hand_and_orientation():
    base, new = np.array([2.0, 4.0, 0.0]), np.array([3.0, 3.0, 5.0])
    assert relgain(base, new) == pytest.approx(((3 - 2) / 2 + (3 - 4) / 4) / 2 * 100)  # the zero base is left out
    assert relgain(base, new, higher_is_better=False) == pytest.approx(-12.5)
    assert relgain(np.array([-2.0]), np.array([-1.0])) == pytest.approx(50.0)  # |f(x)|: a rise stays positive
    assert np.isnan(relgain(np.array([0.0]), np.array([1.0])))


def test_spearman_orientation():
    inputs, rising = np.array([1, 2, 3, 4]), np.array([0.1, 0.2, 0.25, 0.9])
    assert oriented_spearman(inputs, rising) == pytest.approx(1.0)
    assert oriented_spearman(inputs, rising, higher_is_better=False) == pytest.approx(-1.0)
    assert np.isnan(oriented_spearman(inputs, np.ones(4)))


def test_evaluation_runs_every_experiment_and_writes_reports(tmp_path, sd_pipe):
    adapter = IQAAdapter.for_unet(sd_pipe, two_metrics(), seed=0)
    metrics = {name: create_metric(name) for name in ("sharpness", "noise", "colorfulness")}
    settings = EvaluationSettings(prompts=["a red circle", "a blue square"], seeds=2, steps=2,
                                  percentiles=(1, 50, 99), scales=(0.0, 0.5, 1.0))
    try:
        report = evaluate_adapter(sd_pipe, adapter, metrics, settings, tmp_path, progress=False)
    finally:
        adapter.detach()
    images = 4  # 2 prompts x 2 seeds per condition
    # base, 3 percentiles, lambda=1 at p99 and p1 (lambda=0.5 and 0 reuse those), negative guidance
    assert report["n_images"] == images * (1 + 3 + 2 + 1)
    assert report["target_metrics"] == ["sharp", "aes"]
    for name in metrics:
        sweep = report["percentile_sweep"][name]
        assert sweep["percentiles"] == [1, 50, 99] and len(sweep["mean_scores"]) == 3
        scale = report["scale_sweep"][name]
        assert scale["scales"] == [0.0, 0.5, 1.0]
        assert scale["mean_scores"][0] == pytest.approx(sweep["base_mean"])  # lambda = 0 is the base model
        assert scale["mean_scores"][1] == pytest.approx(sweep["mean_scores"][2])  # default lambda at p99
        for key in ("p99", "p1"):
            assert np.isfinite(report["relgain"][key][name])
        assert np.isfinite(report["negative_guidance"]["relgain"][name])
    assert not report["metrics"]["noise"]["higher_is_better"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["relgain"] == report["relgain"] and set(saved["claims"]) >= {"p99_improves_every_target_metric"}
    assert "RelGain against the base model" in (tmp_path / "report.md").read_text()
    rows = (tmp_path / "images" / "images.csv").read_text().splitlines()
    assert len(rows) == 1 + report["n_images"] and "score_sharpness" in rows[0]
    for figure in report["figures"].values():
        assert (tmp_path / figure).stat().st_size > 1000
