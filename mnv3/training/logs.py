"""What a run tells as it trains: a progress bar on a terminal (log lines
otherwise), TensorBoard scalars under model_dir/tb, and one metrics.jsonl
record per epoch (printed as JSON too). Only the chief writes."""

from __future__ import annotations

import json
import sys

import keras
import tensorflow as tf

from mnv3 import metrics as metrics_lib
from mnv3.console import say
from mnv3.run_dir import RunDir


class TrainingLog:
    def __init__(self, run_dir: RunDir, chief: bool, metrics: list, epochs: int,
                 steps_per_epoch: int, log_every_steps: int):
        self.run_dir, self.chief, self.metrics = run_dir, chief, metrics
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.log_every_steps = log_every_steps
        self.writer = tf.summary.create_file_writer(run_dir.tensorboard) if chief \
            else tf.summary.create_noop_writer()
        self._bar = None

    def start_epoch(self) -> None:
        self._bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=[
            *(name for m in self.metrics for name in m.shown), "lr"]) \
            if sys.stdout.isatty() and self.chief else None

    def wants(self, in_epoch: int) -> bool:
        """Whether the step just taken is shown (always, with a progress bar)."""
        return bool(self._bar) or in_epoch % self.log_every_steps == 0 or \
            in_epoch == self.steps_per_epoch

    def progress(self, epoch: int, in_epoch: int, step: int, rates: dict, lr: float) -> None:
        shown = [(name, rates[name]) for m in self.metrics for name in m.shown]
        if self._bar:
            self._bar.update(in_epoch, shown + [("lr", lr)])
        elif self.chief:
            say(f"epoch {epoch + 1}/{self.epochs} step {in_epoch}/{self.steps_per_epoch}: "
                + " ".join(f"{name} {value:.4f}" for name, value in shown) + f" lr {lr:.3g}")
        if in_epoch % self.log_every_steps == 0:
            with self.writer.as_default(step=step):
                for name, value in metrics_lib.numbers(rates).items():
                    tf.summary.scalar(f"train/{name}", value)
                tf.summary.scalar("train/learning_rate", lr)

    def end_epoch(self, record: dict, evaluation: dict | None) -> None:
        """Appends the epoch's record (and TensorBoard's eval scalars)."""
        if not self.chief:
            return
        self.run_dir.append_metrics(record)
        if evaluation is not None:
            with self.writer.as_default(step=record["step"]):
                for name, value in metrics_lib.numbers(evaluation).items():
                    tf.summary.scalar(f"eval/{name}", value)
        self.writer.flush()
        if self._bar:
            print()
        say(json.dumps(record))

    def record(self, record: dict) -> None:
        """A record outside an epoch (train.epochs 0: the starting model)."""
        if self.chief:
            self.run_dir.append_metrics(record)
        say(json.dumps(record))
