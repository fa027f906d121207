"""TFLite's detection post-processing (the TFLite_Detection_PostProcess op) at
the end of an exported detector, so an app gets boxes, classes, scores and a
count, not thousands of raw anchor rows: what MediaPipe's ObjectDetector reads.

TensorFlow has no op of its own for it. Two ways to the same file:
- Appended (DetectorServing.head, then .finish): the converter reads the traced
  function up to the box codes and class scores, and the op is written into the
  converted file after them. No SavedModel is written and read back, which took
  most of a detector's export time (BENCHMARKS.md, export time).
- Declared (DetectorServing.__call__): a tf.function that declares it
  implements the op (an empty body, its settings as attributes in the
  declaration), which the converter's SavedModel importer fuses into the op, as
  TF's object-detection export does. For a TensorFlow whose .tflite schema
  cannot be edited (mnv3.tf_internals).
Its settings are those of mnv3.model.anchors.detect, the Keras model's
post-processing, so the two give the same detections.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from flatbuffers import flexbuffers  # installed with TensorFlow, which depends on it

from mnv3.model.anchors import (IOU_THRESHOLD, MAX_DETECTIONS, SCALE_FACTORS,
                                SCORE_THRESHOLD)
from mnv3.tflite import rewrite

OP = "TFLite_Detection_PostProcess"
# The exported file's outputs, by signature name, in the op's output order.
OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")


def _settings(num_classes: int) -> dict:
    """The op's attributes: {name: (kind, value)}, kind as in a NodeDef's AttrValue."""
    y, x, h, w = SCALE_FACTORS
    return {"max_detections": ("i", MAX_DETECTIONS),
            "max_classes_per_detection": ("i", 1),
            "detections_per_class": ("i", MAX_DETECTIONS),
            "use_regular_nms": ("b", False),  # the fast, class-agnostic NMS
            "nms_score_threshold": ("f", SCORE_THRESHOLD),
            "nms_iou_threshold": ("f", IOU_THRESHOLD),
            "y_scale": ("f", y), "x_scale": ("f", x), "h_scale": ("f", h),
            "w_scale": ("f", w), "num_classes": ("i", num_classes)}


def _declaration(num_classes: int) -> str:
    """The op and its attributes, as the converter reads `experimental_implements`."""
    def text(value):
        return str(value).lower() if isinstance(value, bool) else value
    return " ".join([f'name: "{OP}"'] + [
        f'attr {{ key: "{key}" value {{ {kind}: {text(value)} }} }}'
        for key, (kind, value) in _settings(num_classes).items()])


def _options(num_classes: int) -> bytes:
    """The op's settings as its kernel reads them: a FlexBuffer map."""
    # Floats as float32, as the kernel reads them and the converter writes them.
    cast = {"i": int, "f": lambda value: float(np.float32(value)), "b": bool}
    return bytes(flexbuffers.Dumps({key: cast[kind](value) for key, (kind, value)
                                    in _settings(num_classes).items()}))


class DetectorServing:
    """image -> {OUTPUTS}: `model`'s rows [1, anchors, 4 + 1 + classes] (box
    codes, then background and class logits), softmaxed and post-processed.
    `anchors` [N, 4] are (ymin, xmin, ymax, xmax); the op takes centre and size."""

    outputs = OUTPUTS

    def __init__(self, model, anchors: np.ndarray, num_classes: int):
        self.model, self.num_classes = model, num_classes
        anchors = np.asarray(anchors, np.float32)
        self.anchors = np.concatenate([(anchors[:, :2] + anchors[:, 2:]) / 2,
                                       anchors[:, 2:] - anchors[:, :2]], 1)

    def head(self, image):
        """(box codes, class scores): the op's first two inputs."""
        rows = self.model(image, training=False)
        return rows[..., :4], tf.nn.softmax(rows[..., 4:])  # background first: the op skips it

    def finish(self, tflite: bytes) -> bytes:
        """`tflite`, converted from `head`, with the op after its two outputs."""
        return rewrite.with_custom_op(tflite, OP, _options(self.num_classes),
                                      constants=[self.anchors],
                                      output_shapes=[(1, MAX_DETECTIONS, 4),
                                                     (1, MAX_DETECTIONS),
                                                     (1, MAX_DETECTIONS), (1,)])

    def __call__(self, image):
        @tf.function(experimental_implements=_declaration(self.num_classes))
        def post_process(box_codes, scores, anchors):
            # Never run: the converter replaces the call with the op.
            return tuple(tf.constant(0.0, name=name) for name in OUTPUTS)

        outputs = post_process(*self.head(image), tf.constant(self.anchors))
        return dict(zip(OUTPUTS, outputs))
