"""Image classification, training half: one class per image (the paper's first
task). Its export half is classification_export.py."""

from __future__ import annotations

import keras
import numpy as np

from mnv3 import metrics
from mnv3.data import labels, preprocess
from mnv3.data.sources import load_source
from mnv3.model.builder import CLASSIFIER, HEAD_LAYERS, build_model
from mnv3.model.pretrained import only_class_count_differs
from mnv3.tasks.base import Task


class Classification(Task):
    name = "classification"
    best_metric = "top1"
    head_layers = HEAD_LAYERS

    def build(self, cfg, image_size=-1, **options):
        size = cfg.data.image_size if image_size == -1 else image_size
        return build_model(cfg.model, size, cfg.data.num_classes, **options)

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: the classifier starts afresh for another class count."""
        return layer == CLASSIFIER and only_class_count_differs(ours, theirs)

    # --- data ---
    def load_source(self, seed: int):
        return load_source(self.cfg.data, seed)

    def decode(self, image, label):
        return preprocess.decode(image), label

    def train_view(self, image, label, seed, size):
        return preprocess.train_view(image, seed, self.cfg.data, size), label

    def eval_view(self, image, label):
        return preprocess.eval_view(image, self.cfg.data), label

    def check_label(self, image, label):
        return labels.one_hot_class(image, label, self.cfg.data.num_classes)

    def targets(self, batch):
        return np.argmax(batch, axis=-1)

    # --- training ---
    def loss(self):
        m, t = self.cfg.model, self.cfg.train
        return keras.losses.CategoricalCrossentropy(
            from_logits=m.classifier_activation == "linear",
            label_smoothing=t.label_smoothing, reduction=None)

    def metrics(self):
        return metrics.classification(self.cfg.data.num_classes)
