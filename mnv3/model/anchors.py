"""SSD's anchor boxes, how ground-truth boxes are matched to them, and the box
encoding the detector's regression head predicts (Liu et al. 2016, with the
SSDLite settings of the MobileNetV3 paper, section 6.2, as in TF's object
detection configs for ssdlite_mobilenet_v3).

Boxes are [ymin, xmin, ymax, xmax] in 0..1 of the image throughout.

- Anchors: on each feature map, one set per cell, centred on the cell. Map k of
  m has the scale s_k spaced evenly from `min_scale` to `max_scale`; each
  aspect ratio a gives a box of height s_k / sqrt(a) and width s_k * sqrt(a),
  plus one square box of scale sqrt(s_k * s_k+1) between this map's and the
  next. The first (largest) map has three: a square of scale 0.1 and ratios 2
  and 1/2 at s_0, as TF's SSD configs reduce it (small boxes on a large map
  are many anchors for few objects).
- Matching: an anchor takes the ground-truth box it overlaps most if that IoU
  reaches `threshold` (0.5); then every ground-truth box takes the anchor it
  overlaps most, so no object goes unmatched however odd its shape. Other
  anchors are background.
- Encoding: the centre offset in units of the anchor's size, and the log of
  the size ratio, scaled by (10, 10, 5, 5) (SSD's "variances" 0.1 and 0.2)
  so the four targets have similar spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import tensorflow as tf

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)  # y, x, height, width
FIRST_MAP = ((0.1, 1.0), (None, 2.0), (None, 0.5))  # (scale or None: s_0, aspect)


@dataclass(frozen=True)
class AnchorSpec:
    min_scale: float = 0.2
    max_scale: float = 0.95
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)

    def scales(self, maps: int) -> list[float]:
        if maps == 1:
            return [self.min_scale]
        step = (self.max_scale - self.min_scale) / (maps - 1)
        return [self.min_scale + step * k for k in range(maps)]

    def boxes_per_cell(self, maps: int) -> list[int]:
        """Anchors per cell on each of `maps` feature maps (what each map's
        prediction head must output)."""
        return [len(self._shapes(k, maps)) for k in range(maps)]

    def _shapes(self, k: int, maps: int) -> list[tuple[float, float]]:
        """(height, width) of the anchors of map k."""
        scales = self.scales(maps) + [1.0]
        if k == 0:
            pairs = [(s if s is not None else scales[0], a) for s, a in FIRST_MAP]
        else:
            pairs = [(scales[k], a) for a in self.aspect_ratios]
            pairs.append((math.sqrt(scales[k] * scales[k + 1]), 1.0))
        return [(s / math.sqrt(a), s * math.sqrt(a)) for s, a in pairs]

    def anchors(self, map_sizes: Sequence[tuple[int, int]]) -> tf.Tensor:
        """All anchors, map by map, cell by cell (row-major), shape by shape:
        the order the heads' outputs are concatenated in. [N, 4] float32."""
        out = []
        for k, (rows, cols) in enumerate(map_sizes):
            shapes = tf.constant(self._shapes(k, len(map_sizes)), tf.float32)  # [S, 2]
            cy = (tf.range(rows, dtype=tf.float32) + 0.5) / rows
            cx = (tf.range(cols, dtype=tf.float32) + 0.5) / cols
            cy, cx = tf.meshgrid(cy, cx, indexing="ij")
            centres = tf.reshape(tf.stack([cy, cx], -1), [-1, 1, 2])  # [cells, 1, 2]
            half = shapes[None] / 2  # [1, S, 2]
            out.append(tf.reshape(tf.concat([centres - half, centres + half], -1), [-1, 4]))
        return tf.concat(out, 0)


def iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Intersection over union of every box in a [N, 4] with every box in b [M, 4]: [N, M]."""
    a, b = a[:, None], b[None]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    intersection = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), -1)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return intersection / tf.maximum(area(a) + area(b) - intersection, 1e-9)


def match(anchors: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
          threshold: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Per anchor: the matched ground-truth box ([N, 4]; the anchor itself for
    background) and its class target ([N] int32: 0 background, c + 1 for
    class c). `boxes` [M, 4] and `classes` [M] may be empty."""
    def matched():
        overlaps = iou(anchors, boxes)  # [N, M]
        best_box = tf.argmax(overlaps, 1, output_type=tf.int32)
        best_overlap = tf.reduce_max(overlaps, 1)
        # Every box keeps the anchor it overlaps most, whatever the threshold.
        best_anchor = tf.argmax(overlaps, 0, output_type=tf.int32)  # [M]
        forced = tf.tensor_scatter_nd_update(  # box index + 1, or 0
            tf.zeros(tf.shape(anchors)[:1], tf.int32), best_anchor[:, None],
            tf.range(tf.shape(boxes)[0]) + 1)
        best_box = tf.where(forced > 0, forced - 1, best_box)
        positive = (best_overlap >= threshold) | (forced > 0)
        target = tf.where(positive, tf.gather(classes, best_box) + 1, 0)
        return tf.where(positive[:, None], tf.gather(boxes, best_box), anchors), target

    def background():
        return anchors, tf.zeros(tf.shape(anchors)[:1], tf.int32)

    return tf.cond(tf.shape(boxes)[0] > 0, matched, background)


def _centre_size(boxes):
    size = boxes[..., 2:] - boxes[..., :2]
    return boxes[..., :2] + size / 2, size


def encode(boxes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """The regression targets [N, 4] (ty, tx, th, tw) of `boxes` on their anchors."""
    centre, size = _centre_size(boxes)
    anchor_centre, anchor_size = _centre_size(anchors)
    offset = (centre - anchor_centre) / anchor_size
    scale = tf.math.log(tf.maximum(size, 1e-8) / anchor_size)
    return tf.concat([offset, scale], -1) * tf.constant(SCALE_FACTORS)


def decode(codes: tf.Tensor, anchors: tf.Tensor) -> tf.Tensor:
    """The boxes [..., 4] that `codes` (as encode gives) describe on `anchors`."""
    codes = codes / tf.constant(SCALE_FACTORS)
    anchor_centre, anchor_size = _centre_size(anchors)
    centre = anchor_centre + codes[..., :2] * anchor_size
    size = tf.exp(codes[..., 2:]) * anchor_size
    return tf.concat([centre - size / 2, centre + size / 2], -1)


def detect(predictions: tf.Tensor, anchors: tf.Tensor, max_detections: int = 100,
           score_threshold: float = 0.05, iou_threshold: float = 0.6):
    """Boxes from the detector's output [batch, anchors, 4 + 1 + classes]:
    softmax scores, decoded boxes, then non-max suppression per class (as
    TFLite's detection post-processing does on a phone). Returns (boxes
    [batch, max, 4], scores [batch, max], classes [batch, max] int32, counts
    [batch]); rows past a photo's count are padding."""
    boxes = decode(predictions[..., :4], anchors)
    scores = tf.nn.softmax(predictions[..., 4:])[..., 1:]  # without background
    boxes, scores, classes, counts = tf.image.combined_non_max_suppression(
        boxes[:, :, None], scores, max_output_size_per_class=max_detections,
        max_total_size=max_detections, iou_threshold=iou_threshold,
        score_threshold=score_threshold, clip_boxes=True)
    return boxes, scores, tf.cast(classes, tf.int32), counts
