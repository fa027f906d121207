"""Object detection (SSDLite), training half: so far its loss; the task itself
(data views, metrics, registry entry) and its export half are #28's next
steps.

A photo's labels reach the loss as one row per anchor (mnv3.model.anchors):
the four encoded box targets, then the class target (0 background, c + 1 for
class c), [batch, anchors, 5]. The model's rows are the four box codes, then
the logits of background and of each class.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class DetectionLoss(keras.losses.Loss):
    """Per photo: softmax focal loss over every anchor plus Huber loss on the
    box codes of the matched anchors, each divided by the photo's matched
    anchors (at least 1).

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
