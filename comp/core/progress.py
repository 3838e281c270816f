"""Rich progress for training: a bar for the whole job (with ETA), one for the epoch, a line per epoch."""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from comp.core.console import console, is_quiet


class TrainingProgress:
    """Used by train_fold through four hooks; prints nothing under --quiet except fold results.

    Each epoch prints a line with the ETA of the whole job (folds x epochs), so logs and notebooks,
    where the live bars do not show, still tell how far training is. `label` prefixes the lines
    (tune: "trial 3").
    """

    def __init__(self, folds: int, epochs: int, label: str = ""):
        self.total_epochs = max(1, folds * epochs)
        self.label = f"{label} " if label else ""
        self.epochs_done = 0
        self.started = time.time()
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=True, disable=is_quiet(),
        )
        self.job = self.epoch = None
        self.fold = 0

    def __enter__(self):
        self.progress.__enter__()
        self.job = self.progress.add_task("all folds", total=self.total_epochs)
        self.epoch = self.progress.add_task("epoch", total=1)
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def note(self, message: str) -> None:
        self.progress.console.print(message)

    def fold_begin(self, fold: int, epochs: int, steps: int, start_epoch: int) -> None:
        self.fold, self.epochs, self.steps = fold, epochs, steps
        if start_epoch:
            self.progress.advance(self.job, start_epoch)
            self.total_epochs = max(1, self.total_epochs - start_epoch)  # resumed epochs cost nothing now

    def epoch_begin(self, epoch: int) -> None:
        self.progress.reset(self.epoch, total=self.steps, description=f"fold {self.fold} epoch {epoch + 1}/{self.epochs}")

    def batch_end(self, batch: int) -> None:
        self.progress.update(self.epoch, completed=batch + 1)

    def eta(self) -> str:
        """Time left for the whole job at the mean pace of the epochs done so far."""
        left = (time.time() - self.started) / max(1, self.epochs_done) * max(0, self.total_epochs - self.epochs_done)
        return f"{left:.0f}s" if left < 120 else f"{left / 60:.0f}m"

    def epoch_end(self, epoch: int, row: dict) -> None:
        self.progress.advance(self.job)
        self.epochs_done += 1
        parts = [f"{k.replace('_', ' ')} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row]
        self.progress.console.print(f"{self.label}fold {self.fold} epoch {epoch + 1:>3}/{self.epochs}  " + "  ".join(parts)
                                    + f"  {row['seconds']:.1f}s, ETA {self.eta()}")
