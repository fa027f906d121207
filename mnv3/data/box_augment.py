"""Box-aware views of a detection photo, as tf.data map functions: the crop,
flip and resize move the boxes with the pixels.

The training view is SSD's (Liu et al. 2016, section 3.6): optionally a
zoom-out (the photo placed on a larger grey canvas, so its objects appear
smaller), a random crop that keeps at least a chosen share of some box (the
share drawn from MIN_COVERED, 0 meaning any crop), a horizontal flip, and a
resize to the model's square input. A box stays when its centre lies inside
the crop (SSD's rule: a box cut through the middle is still that object),
clipped to the crop.
The crop is found by tf.image's sample_distorted_bounding_box, whose
min_object_covered is that share of a box's area.

Boxes are [ymin, xmin, ymax, xmax] in 0..1 of the image (data/boxes.py), a
variable number per photo; images stay uint8 0..255 RGB like the other tasks'.
"""

from __future__ import annotations

import tensorflow as tf

from mnv3.data.boxes import PADDING
from mnv3.data.preprocess import decode, to_uint8

MIN_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)  # SSD's choices (its "whole image" aside)
CROP_AREA = (0.1, 1.0)  # of the photo (SSD's; data.box_crop_area)
CROP_ASPECT = (0.5, 2.0)
MIN_SIDE = 1e-3  # a box thinner than this (of the view) after clipping is dropped
CANVAS_GREY = 128  # the zoom-out's canvas: mid-grey, about 0 once the model normalises


def _resize(image, size: int):
    return to_uint8(tf.image.resize(image, [size, size], method="bilinear"))


def _crop(image, boxes, classes, seed, area):
    """A random SSD crop of decoded `image`, with the boxes whose centres it holds."""
    pick_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shares = tf.constant(MIN_COVERED)
    share = tf.gather(shares, tf.random.stateless_uniform(
        [], pick_seed, 0, len(MIN_COVERED), dtype=tf.int32))
    # Without boxes there is nothing to cover: any crop of the right area.
    anchor_boxes = tf.cond(tf.shape(boxes)[0] > 0, lambda: boxes,
                           lambda: tf.constant([[0.0, 0.0, 1.0, 1.0]]))
    begin, size, window = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=anchor_boxes[None], seed=crop_seed,
        min_object_covered=share, aspect_ratio_range=CROP_ASPECT, area_range=area,
        max_attempts=50, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    window = tf.reshape(window, [4])
    boxes, classes = _into_window(boxes, classes, window)
    return image, boxes, classes


def _zoom_out(image, boxes, seed, max_ratio: float):
    """`image` at a random place on a grey canvas 1 to `max_ratio` times its
    height and width (SSD's "expansion"), and `boxes` moved with it."""
    ratio_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    ratio = tf.random.stateless_uniform([], ratio_seed, 1.0, max_ratio)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    canvas_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
    canvas_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
    top = tf.random.stateless_uniform([], y_seed, 0, canvas_h - height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], x_seed, 0, canvas_w - width + 1, dtype=tf.int32)
    image = tf.pad(image, [[top, canvas_h - height - top], [left, canvas_w - width - left],
                           [0, 0]], constant_values=tf.cast(CANVAS_GREY, image.dtype))
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    offset = tf.cast(tf.stack([top, left, top, left]), tf.float32)
    canvas = tf.cast(tf.stack([canvas_h, canvas_w, canvas_h, canvas_w]), tf.float32)
    return image, (boxes * size + offset) / canvas


def _into_window(boxes, classes, window):
    """`boxes` in the coordinates of `window` (both in 0..1 of the same image),
    keeping those whose centres lie inside it, clipped to it."""
    y0, x0, y1, x1 = tf.unstack(window)
    height, width = y1 - y0, x1 - x0
    centre_y = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_x = (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (centre_y > y0) & (centre_y < y1) & (centre_x > x0) & (centre_x < x1)
    moved = (boxes - tf.stack([y0, x0, y0, x0])) / tf.stack([height, width, height, width])
    moved = tf.clip_by_value(moved, 0.0, 1.0)
    big_enough = (moved[:, 2] - moved[:, 0] > MIN_SIDE) & (moved[:, 3] - moved[:, 1] > MIN_SIDE)
    keep = inside & big_enough
    return tf.boolean_mask(moved, keep), tf.boolean_mask(classes, keep)


def flip_left_right(image, boxes):
    flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]],
                       axis=1)
    return tf.image.flip_left_right(image), flipped


def train_view(image, boxes, classes, seed, size: int,
               crop_area: tuple[float, float] = CROP_AREA, flip: bool = True,
               zoom_out: float = 1.0):
    """SSD's augmentation of one photo (bytes or pixels): (size x size x 3
    uint8, boxes, classes). `crop_area`: the crop's share of the photo's area
    ((1, 1): no crop); `flip`: random horizontal flips; `zoom_out`: on half the
    views, the photo on a canvas up to this many times its size (1: never)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = decode(image)
    if zoom_out > 1:
        # Seeds of its own: the crop and flip draw what they drew before zoom-out existed.
        pick_seed, place_seed = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, 1), 2))
        image, boxes = tf.cond(tf.random.stateless_uniform([], pick_seed) < 0.5,
                               lambda: _zoom_out(image, boxes, place_seed, zoom_out),
                               lambda: (image, boxes))
    if crop_area[0] < 1:
        image, boxes, classes = _crop(image, boxes, classes, crop_seed, crop_area)
    if flip:
        flipped = tf.random.stateless_uniform([], flip_seed) < 0.5
        image, boxes = tf.cond(flipped, lambda: flip_left_right(image, boxes),
                               lambda: (image, boxes))
    return _resize(image, size), boxes, classes


def eval_view(image, size: int):
    """The whole photo resized to size x size (its boxes in 0..1 stay as they are)."""
    return _resize(decode(image), size)


def unpadded(label):
    """A padded label [max_boxes, 5] (data/boxes.py) -> its boxes [N, 4] and
    classes [N] int32."""
    rows = tf.boolean_mask(label, label[:, 4] >= 0)
    return rows[:, :4], tf.cast(rows[:, 4], tf.int32)


def padded(boxes, classes, max_boxes: int):
    """Boxes [N <= max_boxes, 4] and classes [N] -> the padded label [max_boxes, 5]."""
    rows = tf.concat([boxes, tf.cast(classes, tf.float32)[:, None]], 1)
    rows = tf.pad(rows, [[0, max_boxes - tf.shape(rows)[0]], [0, 0]], constant_values=PADDING)
    return tf.ensure_shape(rows, [max_boxes, 5])
