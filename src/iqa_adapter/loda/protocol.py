"""The paper's evaluation protocol: train and test on each of several random splits, for LoDa and its
baselines alike, and summarise (median, mean +- std); optionally test on another dataset (cross-dataset).

Every (variant, split) run lives in ``out_dir/<variant>/split_<k>/``: a checkpoint, its training state
and, once tested, ``test_predictions.json`` (rows, predictions, MOS) and ``metrics.json``. Running the
protocol again skips finished runs and resumes an interrupted one, so a long protocol survives being
stopped. The summary is written to ``out_dir/summary.json``, with each variant's pre-processing (its
resize and training crops, and whether they are a dataset's official ones). Images that cannot be read are
dropped from the splits before anything is trained (:func:`~iqa_adapter.loda.data.drop_unreadable`, listed
in ``out_dir/skipped.csv``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..io_utils import write_json
from .config import LoDaConfig
from .data import IQATable, Split, drop_unreadable
from .evaluate import correlation_metrics, format_summary, predict, summarize
from .preprocess import describe_preprocessing
from .train import TrainSettings, train

logger = logging.getLogger("iqa_adapter.loda")
METRICS_FILE = "metrics.json"


def run_protocol(
    table: IQATable,
    splits: list[Split],
    configs: dict[str, LoDaConfig],
    settings: TrainSettings,
    out_dir: str | Path,
    test_table: IQATable | None = None,
    test_crops: int = 15,
    crop_mode: str = "random",
    eval_seed: int = 0,
) -> dict[str, dict]:
    """Train every config of ``configs`` (name -> config) on each split's train rows and test it on the
    split's test rows, or on all rows of ``test_table`` (cross-dataset), leaving out unreadable images.
    Returns, per name, the metrics of each split and their summary."""
    out_dir = Path(out_dir)
    target = test_table if test_table is not None else table
    used = [
        {"train": split["train"], "test": list(range(len(test_table))) if test_table is not None else split["test"]}
        for split in splits
    ]
    used = drop_unreadable(table, used, out_dir, test_table=test_table)
    results: dict[str, dict] = {}
    for name, config in configs.items():
        runs = []
        for k, split in enumerate(used):
            run_dir = out_dir / name / f"split_{k}"
            if (run_dir / METRICS_FILE).is_file():
                runs.append(json.loads((run_dir / METRICS_FILE).read_text()))
                continue
            test_rows = split["test"]
            if not test_rows:
                raise ValueError(f"split {k} has no test rows; give splits with a 'test' part")
            model = train(config, table, split["train"], settings, run_dir, resume=True)
            predictions = predict(model, target, test_rows, crops=test_crops, crop_mode=crop_mode, seed=eval_seed)
            metrics = correlation_metrics(predictions, target.mos[test_rows])
            write_json(
                run_dir / "test_predictions.json",
                {"rows": test_rows, "predictions": predictions.tolist(), "mos": target.mos[test_rows].tolist()},
            )
            write_json(run_dir / METRICS_FILE, metrics)
            logger.info("%s split %d: SRCC %.4f PLCC %.4f", name, k, metrics["srcc"], metrics["plcc"])
            runs.append(metrics)
        results[name] = {"runs": runs, "summary": summarize(runs)}
        logger.info(format_summary(name, results[name]["summary"]))
    write_json(
        out_dir / "summary.json",
        {
            "dataset": str(table.source),
            "test_dataset": str((test_table or table).source),
            "splits": len(splits),
            "recipe": settings.recipe(),
            "test_crops": test_crops,
            "crop_mode": crop_mode,
            "dataset_preset": settings.dataset_preset,
            "preprocessing": {
                name: describe_preprocessing(
                    config.resize, config.crop_size, settings.crops_per_image, settings.dataset_preset
                )
                for name, config in configs.items()
            },
            "resize": {name: config.resize.to_dict() if config.resize else None for name, config in configs.items()},
            "results": {name: result["summary"] for name, result in results.items()},
        },
    )
    return results
