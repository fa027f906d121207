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
  overlaps most, so no object goes unmatched however odd its shape. Anchors
  overlapping a box by 0.4 to 0.5 are ignored by the loss; the rest are
  background.
- Encoding: the centre offset in units of the anchor's size, and the log of
  the size ratio, scaled by (10, 10, 5, 5) (SSD's "variances" 0.1 and 0.2)
  so the four targets have similar spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
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
    """Intersection over union of every box in a [..., N, 4] with every box in
    b [..., M, 4]: [..., N, M] (leading dimensions broadcast)."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    top_left = tf.maximum(a[..., :2], b[..., :2])
    bottom_right = tf.minimum(a[..., 2:], b[..., 2:])
    intersection = tf.reduce_prod(tf.maximum(bottom_right - top_left, 0.0), -1)
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return intersection / tf.maximum(area(a) + area(b) - intersection, 1e-9)


def same_detections(boxes, classes, other_boxes, other_classes, min_iou: float) -> int:
    """How many of the detections (`boxes` [N, 4], `classes` [N]) the others
    also found: one of the same class at IoU `min_iou` or more. Both sides'
    boxes in one layout, whichever it is."""
    if not len(boxes) or not len(other_boxes):
        return 0
    overlaps = np.asarray(iou(tf.constant(boxes, tf.float32),
                              tf.constant(other_boxes, tf.float32)))
    same = (overlaps >= min_iou) & (np.asarray(classes)[:, None]
                                    == np.asarray(other_classes)[None])
    return int(same.any(1).sum())


def match_batch(anchors: tf.Tensor, truth: tf.Tensor, threshold: float = 0.5,
                background_below: float = 0.4) -> tuple[tf.Tensor, tf.Tensor]:
    """Matches a batch of photos' boxes to the anchors [N, 4]. `truth` [B, M, 5]:
    per photo M rows (ymin, xmin, ymax, xmax, class id), rows with a negative
    class being padding (data/boxes.py). Returns per anchor the matched box
    ([B, N, 4]; the anchor itself for background) and the class target ([B, N]
    int32: 0 background, c + 1 for class c, -1 ignored). An anchor overlapping
    a box by `background_below` to `threshold` is ignored (RetinaNet's rule):
    neither object nor background, as it shows most of one; as background it
    would teach the features next to every object that they are background."""
    boxes, classes = truth[..., :4], tf.cast(truth[..., 4], tf.int32)
    valid = classes >= 0  # [B, M]
    overlaps = tf.where(valid[:, None, :], iou(anchors, boxes), -1.0)  # [B, N, M]
    best_box = tf.argmax(overlaps, 2, output_type=tf.int32)  # [B, N]
    best_overlap = tf.reduce_max(overlaps, 2)
    # Every box keeps the anchor it overlaps most, whatever the threshold.
    photo_box = tf.where(valid)  # [K, 2]: (photo, box) of each real box
    best_anchor = tf.gather_nd(tf.argmax(overlaps, 1), photo_box)  # [K]
    forced = tf.tensor_scatter_nd_update(  # box index + 1, or 0
        tf.zeros(tf.shape(best_box), tf.int32),
        tf.stack([photo_box[:, 0], best_anchor], 1),
        tf.cast(photo_box[:, 1], tf.int32) + 1)
    best_box = tf.where(forced > 0, forced - 1, best_box)
    positive = (best_overlap >= threshold) | (forced > 0)
    target = tf.where(positive, tf.gather(classes, best_box, batch_dims=1) + 1,
                      tf.where(best_overlap >= background_below, -1, 0))
    matched = tf.where(positive[..., None], tf.gather(boxes, best_box, batch_dims=1),
                       anchors)
    return matched, target


def match(anchors: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor,
          threshold: float = 0.5, background_below: float = 0.4
          ) -> tuple[tf.Tensor, tf.Tensor]:
    """match_batch for one photo: `boxes` [M, 4] and `classes` [M] (M may be
    0); the matched boxes [N, 4] and class targets [N]."""
    truth = tf.concat([tf.cast(boxes, tf.float32),
                       tf.cast(classes, tf.float32)[:, None]], 1)
    truth = tf.concat([truth, -tf.ones([1, 5])], 0)  # a padding row: M may be 0
    matched, target = match_batch(anchors, truth[None], threshold, background_below)
    return matched[0], target[0]


def targets(anchors: tf.Tensor, truth: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
    """What the detector should output for a batch of padded labels [B, M, 5]:
    per anchor the encoded box and the class target, [B, N, 5] (DetectionLoss's
    labels)."""
    matched, target = match_batch(anchors, truth, threshold)
    return tf.concat([encode(matched, anchors), tf.cast(target, tf.float32)[..., None]], -1)


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


# Post-processing, the same in Keras and in the exported file's TFLite op
# (tflite/postprocess.py): up to 100 boxes per photo (what COCO's mAP counts),
# scores down to 0.01 (a low floor: mAP ranks every detection), duplicates
# above IoU 0.6 suppressed (TF's SSD configs).
MAX_DETECTIONS = 100
SCORE_THRESHOLD = 0.01
IOU_THRESHOLD = 0.6


def detect(predictions: tf.Tensor, anchors: tf.Tensor, max_detections: int = MAX_DETECTIONS,
           score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD):
    """Boxes from the detector's output [batch, anchors, 4 + 1 + classes], as
    TFLite's detection post-processing gives them on a phone (its fast mode):
    softmax scores, each anchor's likeliest class, decoded boxes, then
    non-max suppression across classes. Returns (boxes [batch, max, 4],
    scores [batch, max], classes [batch, max] int32, counts [batch]); rows
    past a photo's count are padding."""
    boxes = decode(predictions[..., :4], anchors)
    scores = tf.nn.softmax(predictions[..., 4:])[..., 1:]  # without background
    best, classes = tf.reduce_max(scores, -1), tf.argmax(scores, -1, output_type=tf.int32)
    kept, counts = tf.image.non_max_suppression_padded(
        boxes, best, max_detections, iou_threshold=iou_threshold,
        score_threshold=score_threshold, pad_to_max_output_size=True)
    valid = tf.range(max_detections)[None] < counts[:, None]
    pick = lambda values: tf.gather(values, kept, batch_dims=1)  # noqa: E731
    return (tf.where(valid[..., None], pick(boxes), 0.0), tf.where(valid, pick(best), 0.0),
            tf.where(valid, pick(classes), 0), counts)
