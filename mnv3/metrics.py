"""What the training loop measures, as a list: each metric is summed over a batch
on the device (a scalar, or a confusion matrix), and turned into reported
values once, from the sums over many batches. A new metric is one entry here;
the loop logs, records and writes every value (metrics.jsonl `train_<name>` /
`eval_<name>`, TensorBoard `train/<name>` for numbers).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from mnv3.errors import UserError

COUNT = "count"  # images in the sums, kept beside the metrics


def _mean(name: str):
    return lambda total, count: {name: float(total) / max(count, 1.0)}


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    # (labels, model outputs, per-example loss) -> the batch's sum
    batch_sum: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    shown: tuple[str, ...] = ()  # its values on the progress line
    shape: tuple[int, ...] = ()  # of the sum
    # (sum over batches, image count) -> reported values; None: {name: sum / count}
    values: Callable[[np.ndarray, float], dict] | None = None

    def report(self, total, count: float) -> dict:
        return (self.values or _mean(self.name))(np.asarray(total), count)


def _hits(k: int):
    def batch_sum(labels, scores, _):
        targets = tf.argmax(labels, axis=-1, output_type=tf.int32)
        hits = tf.math.in_top_k(targets, tf.cast(scores, tf.float32), k)
        return tf.reduce_sum(tf.cast(hits, tf.float32))
    return batch_sum


def _loss_sum(labels, outputs, loss):
    return tf.reduce_sum(loss)


def classification(num_classes: int) -> list[Metric]:
    """Loss, top-1 (the metric that picks the best checkpoint) and top-5."""
    return [Metric("loss", _loss_sum, ("loss",)),
            Metric("top1", _hits(1), ("top1",)),
            Metric("top5", _hits(min(5, num_classes)))]


def pixel_confusion(labels, logits, num_classes: int, ignore_index: int) -> tf.Tensor:
    """truth x predicted pixel counts (float32, so sums stay exact to 2**24 per
    cell per batch), pixels marked ignore_index left out."""
    truth = tf.reshape(tf.cast(labels, tf.int32), [-1])
    predicted = tf.reshape(tf.argmax(logits, axis=-1, output_type=tf.int32), [-1])
    keep = truth != ignore_index
    cells = tf.boolean_mask(truth * num_classes + predicted, keep)
    counts = tf.math.bincount(cells, minlength=num_classes ** 2,
                              maxlength=num_classes ** 2, dtype=tf.float32)
    return tf.reshape(counts, [num_classes, num_classes])


def iou_figures(confusion: np.ndarray) -> dict:
    """mIoU over the classes present in truth or prediction, each class's IoU
    (None where it is in neither), and pixel accuracy, from one confusion."""
    confusion = np.asarray(confusion, np.float64)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = [float(h / u) if u else None for h, u in zip(hits, union)]
    present = [v for v in iou if v is not None]
    total = confusion.sum()
    return {"miou": float(np.mean(present)) if present else 0.0,
            "pixel_accuracy": float(hits.sum() / total) if total else 0.0,
            "iou": iou}


def segmentation(num_classes: int, ignore_index: int) -> list[Metric]:
    """Loss, and mIoU (picks the best checkpoint), per-class IoU and pixel
    accuracy from a confusion summed over the whole set, not averaged per batch."""
    return [Metric("loss", _loss_sum, ("loss",)),
            Metric("confusion",
                   lambda labels, logits, _: pixel_confusion(labels, logits, num_classes,
                                                             ignore_index),
                   ("miou",), (num_classes, num_classes),
                   lambda total, count: iou_figures(total))]


def detection() -> list[Metric]:
    """The loss; a detector's mAP needs the whole set's detections at once
    (tasks/detection.py scores them after the batches)."""
    return [Metric("loss", _loss_sum, ("loss",))]


def batch_sums(metrics: list[Metric], labels, scores, per_example_loss) -> dict:
    sums = {m.name: m.batch_sum(labels, scores, per_example_loss) for m in metrics}
    sums[COUNT] = tf.cast(tf.shape(labels)[0], tf.float32)
    return sums


def zeros(metrics: list[Metric]) -> dict:
    sums = {m.name: tf.zeros(m.shape, tf.float32) for m in metrics}
    sums[COUNT] = tf.zeros((), tf.float32)
    return sums


def no_images(what: str) -> UserError:
    """The error when not one of the `what` (training, evaluation) images was read."""
    return UserError(f"no {what} images could be read (did every one fail to decode?)")


def rates(metrics: list[Metric], sums: dict, what: str = "evaluation") -> dict:
    """Every metric's reported values, plus the image count, from sums read off
    the device. No image counted is an error: every one of the `what` images
    failed to decode."""
    count = float(sums[COUNT])
    if count == 0:
        raise no_images(what)
    out = {}
    for m in metrics:
        out.update(m.report(sums[m.name], count))
    out["images"] = int(count)
    return out


def numbers(rates: dict) -> dict:
    """The scalar values of `rates` (what TensorBoard and log lines show)."""
    return {k: v for k, v in rates.items() if isinstance(v, (int, float)) and k != "images"}
