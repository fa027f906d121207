"""Semantic segmentation, training half: a class per pixel, with the paper's
LR-ASPP head. Its export half is segmentation_export.py."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnv3 import metrics
from mnv3.data import labels, masks
from mnv3.model.builder import reduced_tail_layers
from mnv3.model.lraspp import HEAD_LAYERS, build_segmenter
from mnv3.model.pretrained import only_class_count_differs
from mnv3.tasks.base import Task


class Segmentation(Task):
    name = "segmentation"
    best_metric = "miou"
    head_layers = HEAD_LAYERS

    def build(self, cfg, image_size=-1, **options):
        # A fixed size always (image_size is ignored): the head resizes to the
        # skip's and the input's size.
        size = (cfg.data.image_size, cfg.data.image_width or cfg.data.image_size)
        return build_segmenter(cfg.model, cfg.task, size, cfg.data.num_classes, **options)

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: the halved last stage (task.reduced_tail) cannot take
        a classifier's full-width weights; those layers start afresh."""
        if layer in self.head_layers:  # from a segmenter with another class count
            return only_class_count_differs(ours, theirs)
        return self.cfg.task.reduced_tail and \
            layer.startswith(reduced_tail_layers(self.cfg.model))

    # --- data ---
    def load_source(self, seed: int):
        return masks.load_source(self.cfg.data, seed)

    def decode(self, image, mask):
        return masks.decode_pair(image, mask)

    def train_view(self, image, mask, seed, size):
        # `size` is data.image_size: resolution schedules are for classification.
        return masks.train_view(image, mask, seed, self.cfg.data, self.input_size)

    def eval_view(self, image, mask):
        return masks.eval_view(image, mask, self.input_size)

    def check_label(self, image, mask):
        d = self.cfg.data
        return labels.checked_mask(image, mask, d.num_classes, d.ignore_index)

    def targets(self, batch):
        return np.asarray(batch)

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
        d = self.cfg.data
        return metrics.segmentation(d.num_classes, d.ignore_index)
