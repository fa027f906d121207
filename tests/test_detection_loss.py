"""The detector's loss (#28): what it counts, and that it teaches a box."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnv3 import config as config_lib
from mnv3.model.anchors import AnchorSpec, decode, encode, iou, match
from mnv3.model.ssdlite import build_detector, map_sizes
from mnv3.tasks.detection import DetectionLoss
from mnv3.training.fused_steps import fused

ANCHORS = AnchorSpec().anchors(map_sizes(64, 64))
BOX = tf.constant([[0.2, 0.25, 0.7, 0.65]])


def labels_for(boxes, classes):
    matched, target = match(ANCHORS, boxes, classes)
    return tf.concat([encode(matched, ANCHORS), tf.cast(target, tf.float32)[:, None]],
                     -1)[None]


def predictions_for(labels, classes=3, confidence=12.0):
    """Predictions that are right: the encoded boxes, and a large logit on each target."""
    logits = tf.one_hot(tf.cast(labels[..., 4], tf.int32), classes + 1) * confidence
    return tf.concat([labels[..., :4], logits], -1)


def test_right_predictions_cost_almost_nothing_and_wrong_ones_cost():
    loss = DetectionLoss(reduction="sum_over_batch_size")
    labels = labels_for(BOX, tf.constant([1]))
    right = predictions_for(labels)
    assert float(loss(labels, right)) < 1e-3
    positive = labels[0, :, 4].numpy() > 0
    wrong_class = right.numpy()
    wrong_class[0, positive, 4:] = np.roll(wrong_class[0, positive, 4:], 1, axis=-1)
    assert float(loss(labels, wrong_class)) > 1.0
    # Box codes count on matched anchors only.
    moved = right.numpy()
    moved[0, ~positive, :4] += 3.0
    assert float(loss(labels, moved)) < 1e-3
    moved[0, positive, :4] += 0.5
    assert float(loss(labels, moved)) > 0.1


def test_the_loss_is_per_photo_and_per_matched_anchor():
    loss = DetectionLoss(reduction=None)
    one = labels_for(BOX, tf.constant([1]))
    two = labels_for(tf.concat([BOX, [[0.0, 0.0, 0.3, 0.3]]], 0), tf.constant([1, 2]))
    per_photo = loss(tf.concat([one, two], 0),
                     tf.concat([predictions_for(one), predictions_for(two)], 0) * 0.5)
    assert per_photo.shape == (2,)
    # Each photo's sum is divided by its own matched anchors: comparable values.
    assert 0.5 < float(per_photo[0] / per_photo[1]) < 2.0


@pytest.mark.slow
def test_a_detector_learns_one_box():
    keras.utils.set_random_seed(0)
    cfg = config_lib.load(None, ["model.alpha=0.35", "model.bn_momentum=0.9"])
    model = build_detector(cfg.model, (64, 64), num_classes=3)
    # The box painted on noise (different in each photo: a batch of identical
    # photos leaves the 1x1 maps' BatchNorm no variance to learn from).
    images = np.random.default_rng(0).uniform(0, 80, (16, 64, 64, 3)).astype(np.float32)
    images[:, 13:45, 16:42] = [255, 200, 0]
    labels = labels_for(BOX, tf.constant([2]))
    model.compile(optimizer=fused(keras.optimizers.Adam)(3e-3),  # XLA is slower on CPU
                  loss=DetectionLoss(reduction="sum_over_batch_size"), jit_compile=False)
    # Built here, as the trainer builds its own: made inside fit's first traced
    # step, the optimiser's slot variables cost about 8 s of tracing.
    model.optimizer.build(model.trainable_variables)
    history = model.fit(images, np.repeat(labels, 16, 0), batch_size=16, epochs=30,
                        verbose=0)
    assert history.history["loss"][-1] < 0.2 * history.history["loss"][0]
    # The outputs the loss was minimised on (training mode: after 30 steps the
    # moving BatchNorm statistics have not settled, and inference-mode boxes
    # still sit near their anchors, at IoU 0.5-0.7 from run to run).
    out = model(images, training=True)[0]
    matched = labels[0, :, 4].numpy() > 0
    # The anchor surest of class 2 is one the box was matched to...
    assert matched[int(tf.argmax(tf.nn.softmax(out[:, 4:])[:, 3]))]
    # ...and every matched anchor's decoded box fits the box far better than the
    # anchor itself does (0.57-0.67): the encoding, the loss and the decoding agree.
    found = decode(out[:, :4], ANCHORS).numpy()[matched]
    anchors = decode(tf.zeros_like(out[:, :4]), ANCHORS).numpy()[matched]
    assert iou(tf.constant(anchors), BOX).numpy().max() < 0.7
    assert iou(tf.constant(found), BOX).numpy().min() > 0.8
