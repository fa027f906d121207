"""Object detection, export half: the file ends in TFLite's own detection
post-processing (boxes, classes, scores, count: what MediaPipe's ObjectDetector
reads), with the detector metadata; the report gives COCO mAP per file, how
many of the Keras model's detections each file finds, AP per class, a picture
of eval photos with their boxes and the precision-recall curves."""

from __future__ import annotations

import os

import numpy as np

from mnv3.coco import DetectionScore
from mnv3.model.anchors import MAX_DETECTIONS, same_detections
from mnv3.results import plots
from mnv3.results.report import per_class_by_mode, percent
from mnv3.tasks.base import TaskExport
from mnv3.tasks.detection import keras_detections, per_photo
from mnv3.tflite import metadata, postprocess

PHOTOS_SHOWN = 8  # eval photos drawn in the report's picture
# A detection an app would show (MediaPipe's examples start at 0.5; a bit
# lower shows what the model nearly finds): drawn in the picture, and what
# agreement with Keras counts.
SHOWN_SCORE = 0.3
SAME_BOX_IOU = 0.5  # two files found the same object: same class, boxes this close


class DetectionExport(TaskExport):
    description = "object detector (SSDLite)"
    headline = (("map", "mAP@[.5:.95]", ""), ("map50", "mAP@.5", ""))
    agreement = "finds Keras' detections"
    # The softmax before the post-processing runs in float, like a classifier's.
    float_ops = ("SOFTMAX",)

    def output_range(self):
        return None  # the rows are box codes and logits: calibrated

    def output_shape(self) -> dict:
        return {"detection_boxes": (MAX_DETECTIONS, 4), "detection_classes": (MAX_DETECTIONS,),
                "detection_scores": (MAX_DETECTIONS,), "num_detections": ()}

    def classes_given(self, model) -> int:
        return model.output.shape[-1] - 5  # box codes and background before the classes

    def serving(self, model):
        return postprocess.DetectorServing(model, self.task.anchors.numpy(),
                                           self.cfg.data.num_classes)

    def metadata(self, tflite: bytes, **fields) -> bytes:
        return metadata.add_metadata(
            tflite, outputs=metadata.detector_outputs(len(fields["labels"])), **fields)

    def scorecard(self, labels, reference=None, expected: int = 0):
        return _Scorecard(labels, self.task.anchors, reference, expected)

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """detections.png and precision_recall.png; {what: file name}."""
        names = {"detections": "detections.png", "precision_recall": "precision_recall.png"}
        plots.detections_png(reference.frames, reference.labels,
                             os.path.join(out_dir, names["detections"]),
                             f"{title}: Keras model on eval photos", SHOWN_SCORE)
        plots.precision_recall_png(reference.score.curves,
                                   os.path.join(out_dir, names["precision_recall"]),
                                   f"{title}: Keras model, precision-recall at IoU 0.5")
        return names

    def report_sections(self, report: dict) -> list[str]:
        rows = report["rows"]
        pictures = report.get("pictures", {})
        lines = ["## Eval photos (Keras model)", "",
                 f"![true and detected boxes]({pictures['detections']})", "",
                 f"Dashed white: the labelled boxes; coloured: detections scoring "
                 f"{SHOWN_SCORE} or more.", "",
                 "## AP per class", "",
                 "COCO's AP over IoU 0.5 to 0.95 (pycocotools), each class on its own.", ""]
        lines += per_class_by_mode(rows, "boxes", "AP", lambda c: f"{c['ap']:.3f}")
        lines += ["", f"![precision-recall curves]({pictures['precision_recall']})", "",
                  "## Agreement with Keras", "",
                  f"Of the Keras model's detections scoring {SHOWN_SCORE} or more, the "
                  f"share each file also finds (same class, IoU {SAME_BOX_IOU} or more, "
                  f"score {SHOWN_SCORE} or more):", ""]
        lines += [f"- **{r['mode']}**: {percent(r['agreement'])}" for r in rows[1:]]
        return lines


def _shown(boxes, classes, scores):
    keep = scores >= SHOWN_SCORE
    return boxes[keep], classes[keep]


class _Scorecard:
    """One model's detections on the eval set: COCO mAP against the truth, and
    (for an exported file) the Keras model's shown detections it also finds."""

    def __init__(self, labels: list[str], anchors, reference=None, expected: int = 0):
        self.labels, self.anchors, self.reference = labels, anchors, reference
        self.every = max(1, expected // PHOTOS_SHOWN)  # which photos the picture shows
        self.score = DetectionScore(labels)
        self.found = []  # per photo: (boxes, classes) shown, for the files to match
        self.frames = []
        self.boxes_per_class = np.zeros(len(labels), int)
        self.agreed = self.compared = 0
        self.probe = None
        self.count = 0
        self.figures = None

    def add(self, images: np.ndarray, truth: np.ndarray, outputs) -> None:
        if self.probe is None:
            self.probe = images[:2].copy()
        if isinstance(outputs, dict):  # an exported file's post-processed outputs
            found = (outputs["detection_boxes"], outputs["detection_scores"],
                     outputs["detection_classes"], outputs["num_detections"])
        else:  # the Keras model's rows, post-processed as on a phone
            found = keras_detections(outputs, self.anchors)
        for i, (true_boxes, true_classes, boxes, classes, scores) in enumerate(
                per_photo(truth, found)):
            self.score.add(true_boxes, true_classes, boxes, classes, scores)
            np.add.at(self.boxes_per_class, true_classes, 1)
            shown = _shown(boxes, classes, scores)
            if self.reference is None:
                self.found.append(shown)
                if (self.count + i) % self.every == 0 and len(self.frames) < PHOTOS_SHOWN:
                    self.frames.append((np.clip(np.round(images[i]), 0, 255).astype(np.uint8),
                                        true_boxes, true_classes, boxes, classes, scores))
            else:
                self._compare(self.reference.found[self.count + i], shown)
        self.count += len(images)

    def _compare(self, theirs, ours) -> None:
        """Counts the reference's shown detections that ours match."""
        self.compared += len(theirs[0])
        self.agreed += same_detections(*theirs, *ours, SAME_BOX_IOU)

    def finish(self) -> None:
        self.figures = self.score.result()

    def summary(self) -> str:
        return f"mAP {self.figures['map']:.3f}, mAP@.5 {self.figures['map50']:.3f}"

    def row(self) -> dict:
        f = self.figures
        return {"map": f["map"], "map50": f["map50"],
                "agreement": 1.0 if self.reference is None or not self.compared
                else self.agreed / self.compared,
                "per_class": [{"label": name, "ap": f["ap_per_class"][name],
                               "boxes": int(self.boxes_per_class[i])}
                              for i, name in enumerate(self.labels)]}
