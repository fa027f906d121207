"""The files of one run: model_dir/{config.yaml, labels.txt, checkpoints/,
best.keras, metrics.jsonl, tb/}."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from mnv3 import config as config_lib
from mnv3.config import Config
from mnv3.errors import UserError
from mnv3.files import write_atomically


class RunDir:
    def __init__(self, path: str):
        self.path = path
        self.config = os.path.join(path, "config.yaml")
        self.labels = os.path.join(path, "labels.txt")
        self.checkpoints = os.path.join(path, "checkpoints")
        self.best_model = os.path.join(path, "best.keras")
        self.metrics = os.path.join(path, "metrics.jsonl")
        self.tensorboard = os.path.join(path, "tb")

    def ensure_writable(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass
        except OSError as e:
            raise UserError(f"{self.path}: model_dir is not writable "
                            f"({e.strerror or e})") from None

    def check_compatible(self, cfg: Config) -> None:
        """A model_dir holds one model: refuse a config that builds a different one."""
        if not os.path.exists(self.config):
            return
        try:
            previous = config_lib.load(self.config)
        except UserError as e:
            raise UserError(f"{self.path}: existing run has an unreadable config ({e})") from None
        # What the checkpoint's variables depend on: the network and its optimiser.
        def identity(c: Config) -> dict:
            return {"model": dataclasses.asdict(c.model), "data.image_size": c.data.image_size,
                    "data.num_classes": c.data.num_classes,
                    "train.optimizer": c.train.optimizer,
                    "train.ema_decay is set": c.train.ema_decay is not None}
        mine, theirs = identity(cfg), identity(previous)
        for key in mine:
            if mine[key] == theirs[key]:
                continue
            if key == "model":
                diff = [k for k in mine[key] if mine[key][k] != theirs[key][k]]
                key = f"model.{diff[0]}"
                old, new = theirs["model"][diff[0]], mine["model"][diff[0]]
            else:
                old, new = theirs[key], mine[key]
            raise UserError(f"{self.path} holds a model trained with {key}={old!r}, but the "
                            f"config says {new!r}; use a new --model_dir")

    def save_config(self, cfg: Config) -> None:
        config_lib.save(cfg, self.config)

    def save_labels(self, class_names: list[str]) -> None:
        write_atomically(self.labels, "\n".join(class_names) + "\n")

    def read_labels(self) -> list[str]:
        with open(self.labels, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
