"""What training keeps between epochs: early stopping, the position in the schedule, and the
per-epoch log (CSV and TensorBoard in one sink). All of it survives an interruption."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..faults import crash_point

LOG_FIELDS = [
    "step",
    "epoch",
    "frozen_stages",
    "train_loss",
    "val_loss",
    "val_auc",
    "val_acc",
    "val_auc_by_source",
    "lr",
    "images_per_s",
    "seconds",
    # peak resident memory so far, MB: this process, and its largest finished loader worker
    "peak_rss_mb",
    "resumed_at",  # an epoch resumed from a checkpoint inside it: the batch and process counts
]


@dataclass
class EarlyStopping:
    """Stop a step after ``patience`` epochs without a lower validation loss (or whatever
    lower-is-better criterion the loop gives it: the AUC negated under --select-by auc)."""

    patience: int
    best_loss: float = math.inf
    bad_epochs: int = 0

    def update(self, val_loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.bad_epochs = val_loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience


@dataclass
class TrainState:
    """Where training stands: the step (0-based), the epoch within it, the epoch count over all
    steps, early stopping of the current step and a summary of each finished step."""

    stopping: EarlyStopping
    step: int = 0
    epoch: int = 0
    global_epoch: int = 0
    summaries: list = field(default_factory=list)
    best_file: str | None = None  # in resume/: the current step's best weights so far
    # a checkpoint inside an epoch (--checkpoint-every): the global batches done, their summed
    # loss and images, and how many processes trained them
    batch: int = 0
    partial: tuple = (0.0, 0)
    world: int = 1

    def next_step(self, frozen_stages: int, select_by: str = "loss") -> None:
        best = self.stopping.best_loss  # lower is better: the loss, or the AUC negated
        self.summaries.append(
            {
                "step": self.step + 1,
                "frozen_stages": frozen_stages,
                "epochs": self.epoch,
                **({"best_val_auc": -best} if select_by == "auc" else {"best_val_loss": best}),
            }
        )
        self.step, self.epoch, self.best_file = self.step + 1, 0, None
        self.stopping = EarlyStopping(self.stopping.patience)

    def to_json(self) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "global": self.global_epoch,
            "best_loss": self.stopping.best_loss,
            "bad_epochs": self.stopping.bad_epochs,
            "summaries": self.summaries,
            "best_file": self.best_file,
            "batch": self.batch,
            "partial": list(self.partial),
            "world": self.world,
        }

    @classmethod
    def from_json(cls, d: dict, patience: int) -> TrainState:
        return cls(
            EarlyStopping(patience, float(d["best_loss"]), int(d["bad_epochs"])),
            int(d["step"]),
            int(d["epoch"]),
            int(d.get("global", 0)),
            list(d.get("summaries", [])),
            d.get("best_file"),
            int(d.get("batch", 0)),
            (float(d.get("partial", [0, 0])[0]), int(d.get("partial", [0, 0])[1])),
            int(d.get("world", 1)),
        )


class LogSink:
    """One place each epoch's numbers go: ``log.csv`` and, when asked, TensorBoard.

    ``log.csv`` is rewritten whole (to a temporary file, then renamed) for every row, so a kill
    never leaves half a row; resuming keeps exactly the rows of the epochs the resume state
    holds (``keep``), so an epoch logged but not committed before a kill is not logged twice."""

    def __init__(self, out: Path, tensorboard: bool, resume: bool, keep: int = 0):
        self.path = Path(out) / "log.csv"
        self.rows: list[list[str]] = []
        if resume and self.path.exists():
            with open(self.path, newline="") as fh:
                old = list(csv.DictReader(fh))
            # by column name: rows of older versions lack some columns
            self.rows = [[r.get(k) or "" for k in LOG_FIELDS] for r in old][:keep]
        self._rewrite()
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, TensorBoard drops the events of epochs past the resume point
            self.tb = SummaryWriter(str(Path(out) / "tb"), purge_step=keep if resume else None)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(LOG_FIELDS)
            w.writerows(self.rows)
        crash_point("log")
        tmp.replace(self.path)

    def write(self, row: dict, global_epoch: int) -> None:
        self.rows.append([str(row.get(k, "")) for k in LOG_FIELDS])
        self._rewrite()
        if self.tb is not None:
            for tag, key in (
                ("loss/train", "train_loss"),
                ("loss/val", "val_loss"),
                ("val/auc", "val_auc"),
                ("val/accuracy", "val_acc"),
            ):
                self.tb.add_scalar(tag, float(row[key]), global_epoch)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class TimeBudget:
    """Sizes a step so that training ends inside a time budget: a first plan from the speed of
    the first batches, a second from the first whole epoch (training and validation). The
    learning-rate schedule reads ``lr_steps``, so it follows the plan."""

    def __init__(self, minutes: float, started: float, stretch: float, batches_per_epoch: int):
        self.seconds, self.started, self.stretch = minutes * 60, started, stretch
        self.batches_per_epoch = batches_per_epoch
        self.epochs = 1
        self.lr_steps = batches_per_epoch

    def plan(self, epoch_seconds: float, epochs_done: int, into_epoch: float = 0.0) -> int:
        """Epochs that fit: those done, plus as many more of ``epoch_seconds`` as the time left
        allows (``into_epoch``: seconds already spent in the current one)."""
        left = self.seconds - (time.time() - self.started) + into_epoch
        self.epochs = max(1, epochs_done + int(left // max(epoch_seconds, 1e-9)))
        self.lr_steps = max(1, round(self.epochs * self.stretch * self.batches_per_epoch))
        return self.epochs
