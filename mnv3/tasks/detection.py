"""Object detection (SSDLite, the paper's section 6.2), training half: boxes
and classes per photo. Its export half is detection_export.py.

A photo's label is its padded box list, [max_boxes, 5] (data/boxes.py), the
same in training, evaluation and export. The loss matches it to the anchors
(mnv3.model.anchors) on the device, batch by batch; the eval set's mAP is
COCO's, over the whole set (mnv3.coco), from the detections the exported file
would give.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from mnv3 import metrics
from mnv3.coco import DetectionScore
from mnv3.data import box_augment, boxes, preprocess
from mnv3.model import anchors as anchors_lib
from mnv3.model.builder import reduced_tail_layers
from mnv3.model.pretrained import only_class_count_differs
from mnv3.model.ssdlite import HEAD_LAYERS, HEAD_PREFIX, build_detector, map_sizes
from mnv3.tasks.base import Task


class DetectionLoss(keras.losses.Loss):
    """Per photo: softmax focal loss over every anchor plus Huber loss on the
    box codes of the matched anchors, each divided by the photo's matched
    anchors (at least 1). Labels are the anchors' targets (anchors.targets):
    the four encoded box codes, then the class target (0 background, c + 1 for
    class c, -1 ignored: its one-hot row is all zeros, so it adds no loss),
    [batch, anchors, 5]; predictions the model's rows.

    Focal loss (Lin et al. 2017) rather than SSD's hard negative mining: the
    thousands of background anchors still give gradient, scaled down as they
    become easy, instead of all but the hardest 3 per positive being dropped,
    and there is no per-photo sort; TF's own ssdlite_mobilenet_v3 configs train
    with focal loss too. alpha and gamma are the paper's."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, box_weight: float = 1.0,
                 reduction=None, name: str = "detection_loss", **kwargs):
        super().__init__(name=name, reduction=reduction, **kwargs)
        self.alpha, self.gamma, self.box_weight = alpha, gamma, box_weight
        self._focal = keras.losses.CategoricalFocalCrossentropy(
            alpha=alpha, gamma=gamma, from_logits=True, reduction=None)
        self._huber = keras.losses.Huber(delta=1.0, reduction=None)

    def call(self, labels, predictions):
        codes, target = labels[..., :4], tf.cast(labels[..., 4], tf.int32)
        classes = tf.shape(predictions)[-1] - 4
        positive = tf.cast(target > 0, predictions.dtype)
        matched = tf.maximum(tf.reduce_sum(positive, -1), 1.0)
        focal = self._focal(tf.one_hot(target, classes), predictions[..., 4:])
        box = self._huber(codes, predictions[..., :4]) * positive
        return (tf.reduce_sum(focal, -1) + self.box_weight * tf.reduce_sum(box, -1)) / matched

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma,
                "box_weight": self.box_weight}


class Detection(Task):
    name = "detection"
    best_metric = "map"
    head_layers = HEAD_LAYERS

    @property
    def anchor_spec(self) -> anchors_lib.AnchorSpec:
        t = self.cfg.task
        return anchors_lib.AnchorSpec(*t.anchor_scales, tuple(t.aspect_ratios))

    @functools.cached_property
    def anchors(self) -> tf.Tensor:
        """[N, 4], in the order of the model's output rows."""
        return self.anchor_spec.anchors(map_sizes(*self.input_size))

    def build(self, cfg, image_size=-1, **options):
        # A fixed size: the anchors are laid out for data.image_size.
        size = (cfg.data.image_size, cfg.data.image_size)
        return build_detector(cfg.model, size, cfg.data.num_classes, self.anchor_spec,
                              reduced_tail=cfg.task.reduced_tail, **options)

    def may_start_afresh(self, layer: str, ours, theirs) -> bool:
        """model.init_from: the class predictors start afresh for another class
        count, the halved last stage (task.reduced_tail) from a classifier."""
        if layer.startswith(HEAD_PREFIX + "class"):
            return only_class_count_differs(ours, theirs)
        return self.cfg.task.reduced_tail and \
            layer.startswith(reduced_tail_layers(self.cfg.model))

    # --- data ---
    def load_source(self, seed: int):
        return boxes.load_source(self.cfg.data, self.cfg.task.max_boxes, seed)

    def decode(self, image, label):
        return preprocess.decode(image), label

    def train_view(self, image, label, seed, size):
        # `size` is data.image_size: resolution schedules are for classification.
        d = self.cfg.data
        image, found, classes = box_augment.train_view(
            image, *box_augment.unpadded(label), seed, d.image_size,
            crop_area=tuple(d.box_crop_area), flip=d.random_flip, zoom_out=d.box_zoom_out)
        return image, box_augment.padded(found, classes, self.cfg.task.max_boxes)

    def eval_view(self, image, label):
        return box_augment.eval_view(image, self.cfg.data.image_size), label

    def check_label(self, image, label):
        return image, label  # checked whole when read (data/boxes.py)

    def targets(self, batch):
        return np.asarray(batch)

    # --- training ---
    def loss(self):
        loss, anchors = DetectionLoss(), self.anchors

        def per_photo(truth, predictions):
            return loss(anchors_lib.targets(anchors, truth), predictions)
        return per_photo

    def metrics(self):
        return metrics.detection()

    def whole_set_score(self, class_names: list[str]):
        return SetScore(self.anchors, class_names)


def keras_detections(rows: np.ndarray, anchors) -> list[np.ndarray]:
    """The Keras model's rows post-processed as on a phone (anchors.detect):
    boxes, scores, classes and counts per photo."""
    return [np.asarray(f) for f in anchors_lib.detect(tf.constant(rows), anchors)]


def per_photo(truth: np.ndarray, found):
    """Each photo's (true boxes, true classes, boxes, classes, scores) from a
    batch of padded labels and of detections (boxes, scores, classes, counts;
    rows past a photo's count, which may hold anything, NaN too, dropped)."""
    for label, located, scores, classes, count in zip(truth, *found):
        real, count = label[:, 4] >= 0, int(count)
        yield (label[real, :4], label[real, 4].astype(int), located[:count],
               classes[:count].astype(np.int32), scores[:count])


class SetScore:
    """COCO mAP over the whole eval set, from the Keras model's rows decoded
    and suppressed as on a phone (anchors.detect)."""

    def __init__(self, anchors, class_names: list[str]):
        self.anchors, self.score = anchors, DetectionScore(class_names)

    def add(self, truth: np.ndarray, rows: np.ndarray) -> None:
        for photo in per_photo(truth, keras_detections(rows, self.anchors)):
            self.score.add(*photo)

    def result(self) -> dict:
        return self.score.result()
