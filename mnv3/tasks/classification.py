"""Image classification: one class per image (the paper's first task)."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mnv3.tasks.base import Task

LABEL_RANGE_MESSAGE = "a label is outside 0..data.num_classes-1"
MISCLASSIFIED_SHOWN = 16  # eval images kept for the report's picture


class Classification(Task):
    name = "classification"
    best_metric = "top1"
    # The report table's figures: (key, title, unit), and what agreement counts.
    headline = (("top1", "top-1", "%"),)
    agreement = "agrees with Keras"
    description = "image classifier"

    @property
    def head_layers(self):
        from mnv3.model.builder import HEAD_LAYERS
        return HEAD_LAYERS

    def build(self, cfg, image_size=-1, **options):
        from mnv3.model.builder import build_model

        size = cfg.data.image_size if image_size == -1 else image_size
        return build_model(cfg.model, size, cfg.data.num_classes, **options)

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: the classifier starts afresh for another class count."""
        from mnv3.model.builder import CLASSIFIER
        from mnv3.model.pretrained import only_class_count_differs
        return layer == CLASSIFIER and only_class_count_differs(ours, theirs)

    # --- data ---
    def load_source(self, seed: int):
        from mnv3.data.sources import load_source
        return load_source(self.cfg.data, seed)

    def decode(self, image, label):
        from mnv3.data import preprocess
        return preprocess.decode(image), label

    def train_view(self, image, label, seed, size):
        from mnv3.data import preprocess
        return preprocess.train_view(image, seed, self.cfg.data, size), label

    def eval_view(self, image, label):
        from mnv3.data import preprocess
        return preprocess.eval_view(image, self.cfg.data), label

    def check_label(self, image, label):
        """One-hot float32 labels: label smoothing and MixUp/CutMix need no special
        case in the loss."""
        num_classes = self.cfg.data.num_classes
        checks = [tf.debugging.assert_less(label, num_classes, message=LABEL_RANGE_MESSAGE),
                  tf.debugging.assert_non_negative(label, message=LABEL_RANGE_MESSAGE)]
        with tf.control_dependencies(checks):
            label = tf.identity(label)
        return image, tf.one_hot(label, num_classes, dtype=tf.float32)

    def targets(self, labels):
        return np.argmax(labels, axis=-1)

    # --- training ---
    def loss(self):
        import keras

        m, t = self.cfg.model, self.cfg.train
        return keras.losses.CategoricalCrossentropy(
            from_logits=m.classifier_activation == "linear",
            label_smoothing=t.label_smoothing, reduction=None)

    def metrics(self):
        from mnv3.training import metrics
        return metrics.classification(self.cfg.data.num_classes)

    # --- export ---
    def output_range(self):
        """A softmax output's range is fixed, not calibrated."""
        from mnv3.export.calibrate import PROBABILITY_RANGE
        return PROBABILITY_RANGE if self.cfg.model.classifier_activation == "softmax" \
            else None

    # With a float output the softmax runs in float: int8 probabilities come in
    # steps of 1/256, which ties the top classes of an uncertain image (and rounds
    # most of 1000 classes to 0). Same speed: XNNPACK runs the float softmax too.
    float_ops = ("SOFTMAX",)

    def output_shape(self) -> tuple[int, ...]:
        return (self.cfg.data.num_classes,)

    def metadata(self, tflite: bytes, **fields) -> bytes:
        from mnv3.export.metadata import add_metadata
        return add_metadata(tflite, **fields)

    def scorecard(self, labels, reference=None, expected: int = 0):
        return _Scorecard(labels, reference)

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """confusion.png and misclassified.png; {what: file name}."""
        from mnv3.export import analysis, plots

        counts = analysis.confusion(reference.targets, reference.predicted, len(reference.labels))
        names = {"confusion": "confusion.png", "misclassified": "misclassified.png"}
        plots.confusion_png(counts, reference.labels, os.path.join(out_dir, names["confusion"]),
                            f"{title}\nKeras model, {len(reference.targets)} eval images")
        labels = reference.labels
        plots.misclassified_png(
            [image for image, *_ in reference.misclassified],
            [f"true: {labels[t]}\ngot: {labels[p]} ({score:.2f})"
             for _, t, p, score in reference.misclassified],
            os.path.join(out_dir, names["misclassified"]))
        return names

    def report_sections(self, report: dict) -> list[str]:
        from mnv3.export.report import classification_sections
        return classification_sections(report)


class _Scorecard:
    """One model's predictions on the eval set, one image at a time, against the
    truth and (for an exported file) the Keras model's predictions."""

    def __init__(self, labels: list[str], reference=None):
        self.labels, self.reference = labels, reference
        self.targets, self.predicted, self.misclassified = [], [], []
        self.probe = None
        self.count = 0  # images added

    def add(self, images: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
        pred = np.argmax(scores, axis=-1)
        if self.probe is None:
            self.probe = images[:4].copy()
        if self.reference is None:  # the Keras model: keep a few mistakes to show
            room = MISCLASSIFIED_SHOWN - len(self.misclassified)
            for i in np.nonzero(pred != truth)[0][:room]:
                image = np.clip(np.round(images[i]), 0, 255).astype(np.uint8)
                self.misclassified.append((image, int(truth[i]), int(pred[i]),
                                           float(scores[i, pred[i]])))
        self.targets.append(truth)
        self.predicted.append(pred)
        self.count += len(truth)

    def finish(self) -> None:
        self.targets = np.concatenate(self.targets)
        self.predicted = np.concatenate(self.predicted)

    def summary(self) -> str:
        return f"top-1 {100 * np.mean(self.predicted == self.targets):.2f}%"

    def row(self) -> dict:
        from mnv3.export import analysis

        counts = analysis.confusion(self.targets, self.predicted, len(self.labels))
        row = {"top1": float(np.mean(self.predicted == self.targets)),
               "agreement": 1.0 if self.reference is None else
               float(np.mean(self.predicted == self.reference.predicted)),
               "per_class": analysis.per_class(counts, self.labels),
               "most_confused": analysis.most_confused(counts, self.labels),
               "confusion": analysis.sparse(counts)}
        if self.reference is not None:
            row["disagreements"] = analysis.disagreements(
                self.reference.predicted, self.predicted, self.targets, self.labels)
        return row
