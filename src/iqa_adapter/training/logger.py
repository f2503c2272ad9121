"""Training logs: a CSV file always, TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import csv
from pathlib import Path

from ..io_utils import atomic_write

LOG_DIR = "logs"
LOG_FILE = "train_log.csv"
COLUMNS = ("step", "loss", "lr", "samples_per_s", "skipped_images")


class TrainLogger:
    """Appends one row per logged step to ``out/logs/train_log.csv`` (and TensorBoard, if available).

    A resumed run first drops the rows after the step it resumes from, so redone steps are not logged twice.
    Only the main process logs (``enabled``).
    """

    def __init__(self, out_dir: Path, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = out_dir / LOG_DIR / LOG_FILE
        self.writer = None
        if not enabled:
            return
        self._keep_rows_up_to(resume_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.writer = SummaryWriter(str(out_dir / LOG_DIR / "tensorboard"), purge_step=resume_step + 1)

    def _keep_rows_up_to(self, step: int) -> None:
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

        def write(temporary: str) -> None:
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, COLUMNS)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)

    def log(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, COLUMNS).writerow({"step": step, **values})
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
