"""What every task implements, in two halves (as Model Garden's `tasks/` and
`serving/`): `Task`, what training needs, and `TaskExport`, what the export
needs. `mnv3.tasks.get` builds both and joins them (`task.export`)."""

from __future__ import annotations

from typing import Callable

import numpy as np


class Task:
    """The training half: the model, the data's views and labels, the loss and
    metrics, the metric that picks best.keras, the head that trains alone."""

    name: str
    best_metric: str  # the eval value that picks best.keras (higher is better)
    head_layers: tuple[str, ...]  # what trains while a pretrained backbone is frozen
    export: "TaskExport"  # the export half, set by mnv3.tasks.get

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def input_size(self) -> tuple[int, int]:
        d = self.cfg.data
        return d.image_size, d.image_width or d.image_size

    # --- model ---
    def build(self, cfg, image_size=-1, **options):
        """The Keras model; `options`: name, batch_size, include_rescaling, hard_swish,
        hard_sigmoid."""
        raise NotImplementedError

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: whether our `layer` may start afresh where the source's
        weights have other shapes (else the mismatch is refused)."""
        raise NotImplementedError

    # --- data ---
    def load_source(self, seed: int):
        raise NotImplementedError

    def decode(self, image, label):
        """(encoded or raw image, label) -> decoded, for in-memory caching."""
        raise NotImplementedError

    def train_view(self, image, label, seed, size):
        """One augmented training example at `size` px (this epoch's resolution)."""
        raise NotImplementedError

    def eval_view(self, image, label):
        raise NotImplementedError

    def check_label(self, image, label):
        """Checks a label against the classes and gives the loss's form of it."""
        raise NotImplementedError

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """A batch of pipeline labels -> class indices (per image or per pixel)."""
        raise NotImplementedError

    # --- training ---
    def loss(self) -> Callable:
        """(labels, outputs) -> per-example loss."""
        raise NotImplementedError

    def metrics(self) -> list:
        raise NotImplementedError

    def whole_set_score(self, class_names: list[str]):
        """Eval values that only the whole set gives (a detector's COCO mAP): an
        object whose add(labels, outputs) takes each eval batch's labels and the
        model's outputs (numpy) and whose result() gives {name: value}; None
        when every value is a sum over batches (mnv3.metrics)."""
        return None


class TaskExport:
    """The export half: how an exported file of this task is quantized,
    described (metadata), scored and reported. `task` is the training half."""

    description: str  # in each exported file's metadata, e.g. "image classifier"
    headline: tuple  # the export table's figures: (row key, title, unit)
    agreement: str  # the export table's title for agreement with Keras
    float_ops: tuple[str, ...] = ()  # op kinds an int8 file with float output keeps in float

    def __init__(self, task: Task):
        self.task = task
        self.cfg = task.cfg

    def output_range(self):
        """A fixed (low, high) for the output's int8 range, or None to calibrate."""
        raise NotImplementedError

    def output_shape(self) -> tuple[int, ...] | dict:
        """One image's output shape, which each exported file must give ({name:
        shape} for a file with several outputs)."""
        raise NotImplementedError

    def classes_given(self, model) -> int:
        """How many classes a trained Keras model of this task gives."""
        return model.output.shape[-1]

    def serving(self, model):
        """What the exported file computes around the export graph `model`
        (tflite/convert.py: a detector's tflite/postprocess.DetectorServing);
        None: the model's own output, `probabilities`."""
        return None

    def metadata(self, tflite: bytes, **fields) -> bytes:
        """`tflite` with the MediaPipe metadata of this task's kind of model."""
        raise NotImplementedError

    def scorecard(self, labels: list[str], reference=None, expected: int = 0):
        """Accumulates one model's outputs on the eval set into its report row:
        add(images, truth, outputs), finish(), summary(), row(), count, probe.
        `expected`: about how many images will come (to pick examples across them)."""
        raise NotImplementedError

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """Draws the report's own PNGs from the Keras scorecard (the engine adds
        the training curves); {what: file name}."""
        raise NotImplementedError

    def report_sections(self, report: dict) -> list[str]:
        """report.md's task-specific sections, as lines."""
        raise NotImplementedError
