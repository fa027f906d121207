"""Detection accuracy as COCO measures it, by COCO's own code (pycocotools):
mAP over IoU thresholds 0.5:0.95, mAP at IoU 0.5, and each class's AP at
0.5:0.95, over a whole evaluation set.

Boxes are [ymin, xmin, ymax, xmax] in 0..1 (mnv3.data.boxes); they are scaled
to a nominal 1000 x 1000 image for pycocotools, whose area ranges (small,
medium, large) are then not the photos' own; only the all-areas figures are
reported.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np

_SIDE = 1000.0  # the nominal image pycocotools sees


@dataclass
class DetectionScore:
    """Collects ground truth and detections photo by photo; `result()` scores them."""
    class_names: list[str]
    _truth: list = field(default_factory=list)
    _found: list = field(default_factory=list)
    _photos: int = 0
    # After result(): each class's precision at IoU 0.5 over COCO's 101 recall
    # points (None where that recall is never reached).
    curves: dict = field(default_factory=dict)

    def add(self, true_boxes, true_classes, boxes, classes, scores) -> None:
        """One photo: its ground truth, and the detections found in it."""
        photo = self._photos = self._photos + 1
        for box, cls in zip(np.asarray(true_boxes), np.asarray(true_classes)):
            self._truth.append({"id": len(self._truth) + 1, "image_id": photo,
                                "category_id": int(cls) + 1, "bbox": _xywh(box),
                                "area": float(np.prod(_xywh(box)[2:])), "iscrowd": 0})
        for box, cls, score in zip(np.asarray(boxes), np.asarray(classes), np.asarray(scores)):
            self._found.append({"image_id": photo, "category_id": int(cls) + 1,
                                "bbox": _xywh(box), "score": float(score)})

    def result(self) -> dict:
        """{"map": mAP@[.5:.95], "map50": mAP@.5, "ap_per_class": {name: AP}};
        zeros when nothing was found."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        zero = {"map": 0.0, "map50": 0.0,
                "ap_per_class": {name: 0.0 for name in self.class_names}}
        if not self._found or not self._truth:
            return zero
        truth = COCO()
        truth.dataset = {
            "info": {}, "licenses": [],
            "images": [{"id": i, "width": _SIDE, "height": _SIDE}
                       for i in range(1, self._photos + 1)],
            "annotations": self._truth,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(self._found), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # precision: [IoU thresholds, recall points, classes, area ranges, max dets];
        # area range 0 is all areas, max dets index 2 is 100.
        precision = evaluation.eval["precision"][:, :, :, 0, 2]
        per_class = {}
        for k, name in enumerate(self.class_names):
            self.curves[name] = [None if p < 0 else float(p) for p in precision[0, :, k]]
            values = precision[:, :, k]
            values = values[values > -1]  # -1: a class without ground truth
            per_class[name] = float(values.mean()) if values.size else 0.0
        return {"map": max(float(evaluation.stats[0]), 0.0),
                "map50": max(float(evaluation.stats[1]), 0.0), "ap_per_class": per_class}


def _xywh(box) -> list[float]:
    y0, x0, y1, x1 = (float(v) * _SIDE for v in box)
    return [x0, y0, x1 - x0, y1 - y0]
