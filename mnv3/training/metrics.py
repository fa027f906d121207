"""What the training loop measures, as a list: each metric is summed over a batch
on the device, and the loop divides the sums by the image count when it logs.
A new metric is one entry here; the loop logs, records and writes every one
(metrics.jsonl `train_<name>` / `eval_<name>`, TensorBoard `train/<name>`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf

COUNT = "count"  # images in the sums, kept beside the metrics


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    # (one-hot labels, scores, per-example loss) -> the batch's sum
    batch_sum: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    on_progress_line: bool = False


def _hits(k: int):
    def batch_sum(labels, scores, _):
        targets = tf.argmax(labels, axis=-1, output_type=tf.int32)
        hits = tf.math.in_top_k(targets, tf.cast(scores, tf.float32), k)
        return tf.reduce_sum(tf.cast(hits, tf.float32))
    return batch_sum


def classification(num_classes: int) -> list[Metric]:
    """Loss, top-1 (the metric that picks the best checkpoint) and top-5."""
    return [Metric("loss", lambda labels, scores, loss: tf.reduce_sum(loss), True),
            Metric("top1", _hits(1), True),
            Metric("top5", _hits(min(5, num_classes)))]


def batch_sums(metrics: list[Metric], labels, scores, per_example_loss) -> dict:
    sums = {m.name: m.batch_sum(labels, scores, per_example_loss) for m in metrics}
    sums[COUNT] = tf.cast(tf.shape(labels)[0], tf.float32)
    return sums


def zeros(metrics: list[Metric]) -> dict:
    return {name: tf.zeros((), tf.float32) for name in [m.name for m in metrics] + [COUNT]}


def rates(sums: dict) -> dict:
    """{name: sum / count} plus the image count, from sums read off the device."""
    count = float(sums[COUNT])
    out = {name: float(value) / max(count, 1.0) for name, value in sums.items()
           if name != COUNT}
    out["images"] = int(count)
    return out
