"""Semantic segmentation: a class per pixel, with the paper's LR-ASPP head."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from mnv3.tasks.base import Task

FRAMES_SHOWN = 4  # eval frames drawn in the report's picture


class Segmentation(Task):
    name = "segmentation"
    best_metric = "miou"
    headline = (("miou", "mIoU", ""), ("pixel_accuracy", "pixel accuracy", "%"))
    agreement = "agrees with Keras (pixels)"
    description = "semantic segmenter (LR-ASPP)"

    @property
    def head_layers(self):
        from mnv3.model.lraspp import HEAD_LAYERS
        return HEAD_LAYERS

    def build(self, cfg, image_size=-1, **options):
        from mnv3.model.lraspp import build_segmenter

        # A fixed size always (image_size is ignored): the head resizes to the
        # skip's and the input's size.
        size = (cfg.data.image_size, cfg.data.image_width or cfg.data.image_size)
        return build_segmenter(cfg.model, cfg.task, size, cfg.data.num_classes, **options)

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: the halved last stage (task.reduced_tail) cannot take
        a classifier's full-width weights; those layers start afresh."""
        from mnv3.model import specs
        from mnv3.model.builder import block_table
        from mnv3.model.pretrained import only_class_count_differs

        if layer in self.head_layers:  # from a segmenter with another class count
            return only_class_count_differs(ours, theirs)
        if not self.cfg.task.reduced_tail:
            return False
        blocks = block_table(self.cfg.model)
        tail = tuple(f"block{i}_" for i in range(specs.last_stage_start(blocks), len(blocks)))
        return layer.startswith(tail + ("head_conv",))

    # --- data ---
    def load_source(self, seed: int):
        from mnv3.data.masks import load_source
        return load_source(self.cfg.data, seed)

    def decode(self, image, mask):
        from mnv3.data.masks import decode_pair
        return decode_pair(image, mask)

    def train_view(self, image, mask, seed, size):
        # `size` is data.image_size: resolution schedules are for classification.
        from mnv3.data.masks import train_view
        return train_view(image, mask, seed, self.cfg.data, self.input_size)

    def eval_view(self, image, mask):
        from mnv3.data.masks import eval_view
        return eval_view(image, mask, self.input_size)

    def check_label(self, image, mask):
        from mnv3.data.masks import check_mask
        d = self.cfg.data
        return check_mask(image, mask, d.num_classes, d.ignore_index)

    def targets(self, masks):
        return np.asarray(masks)

    # --- training ---
    def loss(self):
        """Per-pixel cross-entropy over the pixels that are not ignore_index,
        averaged within each image (an image with none of them adds 0)."""
        ignore, num_classes = self.cfg.data.ignore_index, self.cfg.data.num_classes

        def per_image(masks, logits):
            masks = tf.cast(masks, tf.int32)
            keep = tf.cast(masks != ignore, tf.float32)
            safe = tf.where(masks == ignore, 0, tf.minimum(masks, num_classes - 1))
            pixels = tf.nn.sparse_softmax_cross_entropy_with_logits(
                safe, tf.cast(logits, tf.float32))
            return tf.reduce_sum(pixels * keep, axis=[1, 2]) / \
                tf.maximum(tf.reduce_sum(keep, axis=[1, 2]), 1.0)
        return per_image

    def metrics(self):
        from mnv3.training import metrics
        d = self.cfg.data
        return metrics.segmentation(d.num_classes, d.ignore_index)

    # --- export ---
    def output_range(self):
        return None  # logits: calibrated like any activation

    # With a float output the bilinear upsampling runs in float: XNNPACK's int8
    # RESIZE_BILINEAR to the full frame took 0.75 ms where float takes 0.47 (plus
    # a full-size DEQUANTIZE), at 480x360 on CamVid (BENCHMARKS.md).
    float_ops = ("RESIZE_BILINEAR",)

    def output_shape(self) -> tuple[int, ...]:
        return (*self.input_size, self.cfg.data.num_classes)

    def metadata(self, tflite: bytes, **fields) -> bytes:
        from mnv3.export import metadata
        return metadata.add_metadata(
            tflite, output=metadata.segmenter_output(len(fields["labels"])),
            custom=[metadata.segmenter_softmax()], **fields)

    def scorecard(self, labels, reference=None, expected: int = 0):
        return _Scorecard(labels, self.cfg.data.ignore_index, reference, expected)

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """frames.png (image, truth, prediction); {what: file name}."""
        from mnv3.export import plots

        names = {"frames": "frames.png"}
        plots.segmentation_png(reference.frames, reference.labels,
                               self.cfg.data.ignore_index,
                               os.path.join(out_dir, names["frames"]),
                               f"{title}: Keras model on eval frames")
        return names

    def report_sections(self, report: dict) -> list[str]:
        from mnv3.export.report import segmentation_sections
        return segmentation_sections(report)


class _Scorecard:
    """One model's per-pixel predictions on the eval set: a confusion over every
    pixel that is not ignore_index, and (for an exported file) the share of all
    pixels where it agrees with the Keras model."""

    def __init__(self, labels: list[str], ignore_index: int, reference=None,
                 expected: int = 0):
        self.labels, self.ignore_index, self.reference = labels, ignore_index, reference
        self.every = max(1, expected // FRAMES_SHOWN)  # which frames the picture shows
        n = len(labels)
        self.confusion = np.zeros((n, n), np.int64)
        self.predicted = []  # the Keras model's, which exported files are compared with
        self.frames = []  # (image, truth, prediction), the first few
        self.agreed = self.pixels = 0
        self.probe = None
        self.count = 0

    def add(self, images: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
        from mnv3.export import analysis

        n = len(self.labels)
        pred = np.argmax(scores, axis=-1).astype(np.uint8)
        if self.probe is None:
            self.probe = images[:2].copy()
        keep = truth != self.ignore_index
        self.confusion += analysis.confusion(truth[keep], pred[keep], n)
        if self.reference is None:
            self.predicted += list(pred)
            # Frames spread over the set: neighbours in a video set are near copies.
            for i in range(len(images)):
                if (self.count + i) % self.every == 0 and len(self.frames) < FRAMES_SHOWN:
                    self.frames.append((np.clip(np.round(images[i]), 0, 255)
                                        .astype(np.uint8), truth[i], pred[i]))
        else:
            theirs = np.stack(self.reference.predicted[self.count:self.count + len(pred)])
            self.agreed += int(np.sum(theirs == pred))
        self.pixels += pred.size
        self.count += len(images)

    def finish(self) -> None:
        pass

    def figures(self) -> dict:
        from mnv3.training.metrics import iou_figures
        return iou_figures(self.confusion)

    def summary(self) -> str:
        f = self.figures()
        return f"mIoU {100 * f['miou']:.2f}, pixel accuracy {100 * f['pixel_accuracy']:.2f}%"

    def row(self) -> dict:
        from mnv3.export import analysis

        f = self.figures()
        return {"miou": f["miou"], "pixel_accuracy": f["pixel_accuracy"],
                "agreement": 1.0 if self.reference is None else self.agreed / self.pixels,
                "per_class": [{"label": label, "iou": iou,
                               "pixels": int(self.confusion[i].sum())}
                              for i, (label, iou) in enumerate(zip(self.labels, f["iou"]))],
                "confusion": analysis.sparse(self.confusion)}
