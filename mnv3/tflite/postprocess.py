"""TFLite's detection post-processing (the TFLite_Detection_PostProcess op) at
the end of an exported detector, so an app gets boxes, classes, scores and a
count, not thousands of raw anchor rows: what MediaPipe's ObjectDetector reads.

TensorFlow has no op of its own for it. The converter turns a tf.function
that declares it implements the op (an empty body, its settings as attributes
in the declaration) into the TFLite op, as TF's object-detection export does.
Its settings are those of mnv3.model.anchors.detect, the Keras model's
post-processing, so the two give the same detections.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mnv3.model.anchors import (IOU_THRESHOLD, MAX_DETECTIONS, SCALE_FACTORS,
                                SCORE_THRESHOLD)

OP = "TFLite_Detection_PostProcess"
# The exported file's outputs, by signature name, in the op's output order.
OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


def _declaration(num_classes: int) -> str:
    """The op and its attributes, as the converter reads `experimental_implements`."""
    y, x, h, w = SCALE_FACTORS
    attributes = {"max_detections": ("i", MAX_DETECTIONS),
                  "max_classes_per_detection": ("i", 1),
                  "detections_per_class": ("i", MAX_DETECTIONS),
                  "use_regular_nms": ("b", "false"),  # the fast, class-agnostic NMS
                  "nms_score_threshold": ("f", SCORE_THRESHOLD),
                  "nms_iou_threshold": ("f", IOU_THRESHOLD),
                  "y_scale": ("f", y), "x_scale": ("f", x), "h_scale": ("f", h),
                  "w_scale": ("f", w), "num_classes": ("i", num_classes)}
    return " ".join([f'name: "{OP}"'] + [
        f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}'
        for key, (kind, value) in attributes.items()])


def serving(model, anchors: np.ndarray, num_classes: int):
    """image -> {OUTPUTS}: `model`'s rows [1, anchors, 4 + 1 + classes] (box
    codes, then background and class logits), softmaxed and post-processed.
    `anchors` [N, 4] are (ymin, xmin, ymax, xmax); the op takes centre and size."""
    anchors = np.asarray(anchors, np.float32)
    centre_size = np.concatenate([(anchors[:, :2] + anchors[:, 2:]) / 2,
                                  anchors[:, 2:] - anchors[:, :2]], 1)

    @tf.function(experimental_implements=_declaration(num_classes))
    def post_process(box_codes, scores, anchors):
        # Never run: the converter replaces the call with the op.
        return tuple(tf.constant(0.0, name=name) for name in OUTPUTS)

    def serve(image):
        rows = model(image, training=False)
        scores = tf.nn.softmax(rows[..., 4:])  # background first: the op skips it
        outputs = post_process(rows[..., :4], scores, tf.constant(centre_size))
        return dict(zip(OUTPUTS, outputs))
    return serve
