"""Semantic segmentation, export half: logits calibrated like any activation,
the segmenter metadata MediaPipe's ImageSegmenter reads, and the report (mIoU,
pixel accuracy, IoU per class, frames with truth and prediction)."""

from __future__ import annotations

import os

import numpy as np

from mnv3 import metrics
from mnv3.results import analysis, plots
from mnv3.results.report import per_class_by_mode, percent
from mnv3.tasks.base import TaskExport
from mnv3.tflite import metadata

FRAMES_SHOWN = 4  # eval frames drawn in the report's picture


class SegmentationExport(TaskExport):
    description = "semantic segmenter (LR-ASPP)"
    headline = (("miou", "mIoU", ""), ("pixel_accuracy", "pixel accuracy", "%"))
    agreement = "agrees with Keras (pixels)"

    def output_range(self):
        return None  # logits: calibrated like any activation

    # With a float output the bilinear upsampling runs in float: XNNPACK's int8
    # RESIZE_BILINEAR to the full frame took 0.75 ms where float takes 0.47 (plus
    # a full-size DEQUANTIZE), at 480x360 on CamVid (BENCHMARKS.md).
    float_ops = ("RESIZE_BILINEAR",)

    def output_shape(self) -> tuple[int, ...]:
        return (*self.task.input_size, self.cfg.data.num_classes)

    def metadata(self, tflite: bytes, **fields) -> bytes:
        return metadata.add_metadata(
            tflite, output=metadata.segmenter_output(len(fields["labels"])),
            custom=[metadata.segmenter_softmax()], **fields)

    def scorecard(self, labels, reference=None, expected: int = 0):
        return _Scorecard(labels, self.cfg.data.ignore_index, reference, expected)

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """frames.png (image, truth, prediction); {what: file name}."""
        names = {"frames": "frames.png"}
        plots.segmentation_png(reference.frames, reference.labels,
                               self.cfg.data.ignore_index,
                               os.path.join(out_dir, names["frames"]),
                               f"{title}: Keras model on eval frames")
        return names

    def report_sections(self, report: dict) -> list[str]:
        """Frames with truth and prediction, and each class's IoU per model."""
        pictures = report.get("pictures", {})
        return ["## Eval frames (Keras model)", "",
                f"![image, truth and prediction]({pictures['frames']})", "",
                "## IoU per class", "",
                "IoU: the pixels both called the class, over the pixels either one "
                "does (truth or prediction); mIoU is their mean. Ignored pixels count "
                "in neither.", ""] + \
            per_class_by_mode(report["rows"], "pixels", "IoU", lambda c: percent(c["iou"]))


class _Scorecard:
    """One model's per-pixel predictions on the eval set: a confusion over every
    pixel that is not ignore_index, and (for an exported file) the share of all
    pixels where it agrees with the Keras model."""

    def __init__(self, labels: list[str], ignore_index: int, reference=None,
                 expected: int = 0):
        self.labels, self.ignore_index, self.reference = labels, ignore_index, reference
        self.every = max(1, expected // FRAMES_SHOWN)  # which frames the picture shows
        n = len(labels)
        self.confusion = np.zeros((n, n), np.int64)
        self.predicted = []  # the Keras model's, which exported files are compared with
        self.frames = []  # (image, truth, prediction), the first few
        self.agreed = self.pixels = 0
        self.probe = None
        self.count = 0

    def add(self, images: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
        n = len(self.labels)
        pred = np.argmax(scores, axis=-1).astype(np.uint8)
        if self.probe is None:
            self.probe = images[:2].copy()
        keep = truth != self.ignore_index
        self.confusion += analysis.confusion(truth[keep], pred[keep], n)
        if self.reference is None:
            self.predicted += list(pred)
            # Frames spread over the set: neighbours in a video set are near copies.
            for i in range(len(images)):
                if (self.count + i) % self.every == 0 and len(self.frames) < FRAMES_SHOWN:
                    self.frames.append((np.clip(np.round(images[i]), 0, 255)
                                        .astype(np.uint8), truth[i], pred[i]))
        else:
            theirs = np.stack(self.reference.predicted[self.count:self.count + len(pred)])
            self.agreed += int(np.sum(theirs == pred))
        self.pixels += pred.size
        self.count += len(images)

    def finish(self) -> None:
        pass

    def figures(self) -> dict:
        return metrics.iou_figures(self.confusion)

    def summary(self) -> str:
        f = self.figures()
        return f"mIoU {100 * f['miou']:.2f}, pixel accuracy {100 * f['pixel_accuracy']:.2f}%"

    def row(self) -> dict:
        f = self.figures()
        return {"miou": f["miou"], "pixel_accuracy": f["pixel_accuracy"],
                "agreement": 1.0 if self.reference is None else self.agreed / self.pixels,
                "per_class": [{"label": label, "iou": iou,
                               "pixels": int(self.confusion[i].sum())}
                              for i, (label, iou) in enumerate(zip(self.labels, f["iou"]))],
                "confusion": analysis.sparse(self.confusion)}
