"""Each example's label checked against the classes as it enters a batch: a
class index per image, or a class index per pixel. A label out of range stops
the pipeline with one of the messages below, which `user_errors_from_data`
(data.pipeline) turns into a line naming the config keys to check."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from PIL import Image

LABEL_RANGE_MESSAGE = "a label is outside 0..data.num_classes-1"
MASK_RANGE_MESSAGE = "a mask value is neither a class (0..data.num_classes-1) nor " \
    "data.ignore_index"


def one_hot_class(image, label, num_classes: int):
    """(image, class index) -> (image, one-hot float32): label smoothing and
    MixUp/CutMix then need no special case in the loss."""
    checks = [tf.debugging.assert_less(label, num_classes, message=LABEL_RANGE_MESSAGE),
              tf.debugging.assert_non_negative(label, message=LABEL_RANGE_MESSAGE)]
    with tf.control_dependencies(checks):
        label = tf.identity(label)
    return image, tf.one_hot(label, num_classes, dtype=tf.float32)


def checked_mask(image, mask, num_classes: int, ignore_index: int):
    """(image, uint8 mask) -> (image, int32 mask), every value a class or
    ignore_index."""
    valid = tf.reduce_all((mask < num_classes) | (mask == ignore_index))
    with tf.control_dependencies([tf.debugging.Assert(valid, [MASK_RANGE_MESSAGE])]):
        return image, tf.cast(mask, tf.int32)


def first_mask_out_of_range(paths, num_classes: int, ignore_index: int):
    """(mask file, its first bad value) for the first mask holding a value that is
    neither a class nor ignore_index, or None (read whole: call after a failure)."""
    for path in paths:
        with Image.open(path) as mask:
            values = np.unique(np.asarray(mask))
        bad = values[(values >= num_classes) & (values != ignore_index)]
        if bad.size:
            return path, int(bad[0])
    return None
