"""The files of one run: model_dir/{config.yaml, labels.txt, checkpoints/,
best.keras, metrics.jsonl, init_from.json, tb/, export/}, and the lock that gives one trainer
at a time the right to write them. No TensorFlow here: export and tools read
runs without the training stack."""

from __future__ import annotations

import glob
import json
import os
import tempfile

from mnv3 import config as config_lib
from mnv3.config import Config
from mnv3.data.classes import check_class_name
from mnv3.errors import UserError
from mnv3.files import Lock, write_atomically


class RunDir:
    def __init__(self, path: str):
        self.path = path
        self.config = os.path.join(path, "config.yaml")
        self.labels = os.path.join(path, "labels.txt")
        self.checkpoints = os.path.join(path, "checkpoints")
        self.best_model = os.path.join(path, "best.keras")
        self.metrics = os.path.join(path, "metrics.jsonl")
        # What a run fine-tuned from started with (model.init_from): source and sha256.
        self.init_record = os.path.join(path, "init_from.json")
        self.tensorboard = os.path.join(path, "tb")
        self.export = os.path.join(path, "export")
        # What a resumed run must share with its checkpoints to continue at the
        # same data position (written before the first checkpoint).
        self.data_layout = os.path.join(self.checkpoints, "data_layout.json")

    def ensure_writable(self) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".write-test-"):
                pass
        except OSError as e:
            raise UserError(f"{self.path}: model_dir is not writable "
                            f"({e.strerror or e})") from None

    def training_lock(self) -> Lock:
        return Lock(os.path.join(self.path, ".train.lock"), "train.py")

    def export_lock(self) -> Lock:
        return Lock(os.path.join(self.path, ".export.lock"), "export_tflite.py")

    def has_trained_state(self) -> bool:
        """True once a checkpoint or best.keras exists: from then on the run
        directory is held to its config."""
        return bool(glob.glob(os.path.join(glob.escape(self.checkpoints), "ckpt-*"))) \
            or os.path.exists(self.best_model)

    def check_compatible(self, cfg: Config) -> None:
        """A model_dir holds one model: refuse a config that builds a different one.
        Before the first checkpoint nothing is held: a failed first attempt can be
        rerun with a corrected config."""
        if not os.path.exists(self.config) or not self.has_trained_state():
            return
        try:
            previous = config_lib.load(self.config)
        except UserError as e:
            raise UserError(f"{self.path}: existing run has an unreadable config ({e})") from None
        # What the checkpoint's variables and data position depend on.
        mine = config_lib.checkpoint_identity(cfg)
        theirs = config_lib.checkpoint_identity(previous)
        for key, new in mine.items():
            if theirs.get(key) != new:
                raise UserError(f"{self.path} holds a model trained with "
                                f"{key}={theirs.get(key)!r}, but the config says {new!r}; "
                                "use a new --model_dir")

    def save_config(self, cfg: Config) -> None:
        config_lib.save(cfg, self.config)

    def save_labels(self, class_names: list[str]) -> None:
        for name in class_names:
            check_class_name(name, self.labels)
        write_atomically(self.labels, "\n".join(class_names) + "\n")

    def read_labels(self, expected: int | None = None) -> list[str]:
        try:
            with open(self.labels, encoding="utf-8") as f:
                names = f.read().split("\n")
        except UnicodeDecodeError:
            raise UserError(f"{self.labels}: damaged (not UTF-8 text); it is rewritten "
                            "by rerunning train.py with the same config") from None
        except OSError as e:
            raise UserError(f"{self.labels}: cannot be read ({e.strerror or e})") from None
        if names and names[-1] == "":
            names.pop()
        if expected is not None and len(names) != expected:
            raise UserError(f"{self.labels}: lists {len(names)} classes but the model has "
                            f"{expected}; it is damaged or from another run")
        for name in names:
            check_class_name(name, self.labels)
        return names

    def save_init_record(self, record: dict) -> None:
        write_atomically(self.init_record, json.dumps(record, indent=1) + "\n")

    def read_init_record(self) -> dict:
        """What the run started from (init_from.json); {} for a run without one."""
        try:
            with open(self.init_record, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UserError(f"{self.init_record}: damaged ({e}); it records what the "
                            "run started from") from None
        return record if isinstance(record, dict) else {}

    def save_data_layout(self, layout: dict) -> None:
        os.makedirs(self.checkpoints, exist_ok=True)
        write_atomically(self.data_layout, json.dumps(layout))

    def read_data_layout(self) -> dict | None:
        """The data layout the checkpoints were made with; None before the first
        checkpoint (or for runs older than this file)."""
        if not os.path.exists(self.data_layout):
            return None
        try:
            with open(self.data_layout, encoding="utf-8") as f:
                layout = json.load(f)
            if not isinstance(layout, dict):
                raise ValueError("not a mapping")
            return layout
        except (OSError, ValueError) as e:
            raise UserError(f"{self.data_layout}: damaged ({e}); it records the data "
                            "the checkpoints were trained on") from None

    def _metric_lines(self) -> list[tuple[str, dict | None]]:
        """(line, its record, or None for a line cut short by a crash)."""
        if not os.path.exists(self.metrics):
            return []
        with open(self.metrics, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        parsed = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            parsed.append((line, record if isinstance(record, dict) else None))
        return parsed

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's records, one per epoch (lines a crash cut short skipped)."""
        return [record for _, record in self._metric_lines() if record is not None]

    def drop_metrics_after(self, epoch: int) -> None:
        """Keeps metrics.jsonl in step with the checkpoint a run resumed from:
        epochs past it (from a checkpoint now set aside) are trained again."""
        parsed = self._metric_lines()
        kept = [line for line, record in parsed
                if record is not None and record.get("epoch", 0) <= epoch]
        if kept != [line for line, _ in parsed]:
            write_atomically(self.metrics, "".join(k + "\n" for k in kept))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
