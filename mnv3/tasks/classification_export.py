"""Image classification, export half: a softmax output's fixed int8 range, the
classifier metadata MediaPipe's ImageClassifier reads, and the report (top-1,
confusion, misclassified images, where the exported files disagree)."""

from __future__ import annotations

import os

import numpy as np

from mnv3.results import analysis, plots
from mnv3.results.report import percent
from mnv3.tasks.base import TaskExport
from mnv3.tflite import metadata

PROBABILITY_RANGE = (0.0, 1.0)  # a softmax output's int8 range: fixed, not calibrated
MISCLASSIFIED_SHOWN = 16  # eval images kept for the report's picture
# report.md lists every class up to this many; beyond, the weakest ones
# (report.json has them all).
CLASSES_LISTED = 50


class ClassificationExport(TaskExport):
    description = "image classifier"
    # The report table's figures: (key, title, unit), and what agreement counts.
    headline = (("top1", "top-1", "%"),)
    agreement = "agrees with Keras"
    # With a float output the softmax runs in float: int8 probabilities come in
    # steps of 1/256, which ties the top classes of an uncertain image (and rounds
    # most of 1000 classes to 0). Same speed: XNNPACK runs the float softmax too.
    float_ops = ("SOFTMAX",)

    def output_range(self):
        return PROBABILITY_RANGE if self.cfg.model.classifier_activation == "softmax" \
            else None

    def output_shape(self) -> tuple[int, ...]:
        return (self.cfg.data.num_classes,)

    def metadata(self, tflite: bytes, **fields) -> bytes:
        return metadata.add_metadata(
            tflite, output=metadata.classifier_output(len(fields["labels"])), **fields)

    def scorecard(self, labels, reference=None, expected: int = 0):
        return _Scorecard(labels, reference)

    def pictures(self, reference, out_dir: str, title: str) -> dict:
        """confusion.png and misclassified.png; {what: file name}."""
        counts = analysis.confusion(reference.targets, reference.predicted, len(reference.labels))
        names = {"confusion": "confusion.png", "misclassified": "misclassified.png"}
        plots.confusion_png(counts, reference.labels, os.path.join(out_dir, names["confusion"]),
                            f"{title}\nKeras model, {len(reference.targets)} eval images")
        labels = reference.labels
        plots.misclassified_png(
            [image for image, *_ in reference.misclassified],
            [f"true: {labels[t]}\ngot: {labels[p]} ({score:.2f})"
             for _, t, p, score in reference.misclassified],
            os.path.join(out_dir, names["misclassified"]))
        return names

    def report_sections(self, report: dict) -> list[str]:
        """Confusion, misclassified images, disagreements and per-class figures."""
        rows = report["rows"]
        pictures = report.get("pictures", {})
        lines = ["## Confusion (Keras model)", "",
                 f"![confusion matrix]({pictures['confusion']})", "",
                 "Most-confused pairs:", "",
                 "| true class | taken for | images | share of the class |",
                 "| --- | --- | ---: | ---: |"]
        lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | "
                  f"{percent(p['share_of_true'])} |" for p in rows[0]["most_confused"]]
        if not rows[0]["most_confused"]:
            lines.append("| (none) | | | |")
        lines += ["", "## Misclassified eval images (Keras model)", "",
                  f"![misclassified images]({pictures['misclassified']})", ""]
        lines += ["## Where the exported models disagree with Keras", ""]
        for r in rows[1:]:
            d = r["disagreements"]
            classes = ", ".join(f"{c['label']} ({c['count']})" for c in d["by_true_class"])
            lines.append(f"- **{r['mode']}**: {d['count']} of {report['eval_images']} "
                         f"images ({percent(d['rate'])})"
                         + (f"; by true class: {classes}" if classes else ""))
        return lines + [""] + per_class_table(rows)


def per_class_table(rows: list[dict]) -> list[str]:
    keras = rows[0]["per_class"]
    order = list(range(len(keras)))
    title = "## Per class"
    if len(order) > CLASSES_LISTED:  # the weakest classes first
        order = sorted(order, key=lambda i: (keras[i]["recall"] is None,
                                             keras[i]["recall"] or 0.0))[:CLASSES_LISTED]
        title += f" (the {CLASSES_LISTED} with the lowest Keras recall; all in report.json)"
    modes = [r["mode"] for r in rows]
    lines = [title, "",
             "Recall is the class's own top-1: the share of its images given that class. "
             "Precision: the share of images given the class that are of it.", "",
             "| class | images | " + " | ".join(f"{m} recall" for m in modes)
             + " | keras precision |",
             "| --- | ---: | " + " | ".join("---:" for _ in modes) + " | ---: |"]
    for i in order:
        recalls = " | ".join(percent(r["per_class"][i]["recall"]) for r in rows)
        lines.append(f"| {keras[i]['label']} | {keras[i]['support']} | {recalls} | "
                     f"{percent(keras[i]['precision'])} |")
    return lines


class _Scorecard:
    """One model's predictions on the eval set, one image at a time, against the
    truth and (for an exported file) the Keras model's predictions."""

    def __init__(self, labels: list[str], reference=None):
        self.labels, self.reference = labels, reference
        self.targets, self.predicted, self.misclassified = [], [], []
        self.probe = None
        self.count = 0  # images added

    def add(self, images: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> None:
        pred = np.argmax(scores, axis=-1)
        if self.probe is None:
            self.probe = images[:4].copy()
        if self.reference is None:  # the Keras model: keep a few mistakes to show
            room = MISCLASSIFIED_SHOWN - len(self.misclassified)
            for i in np.nonzero(pred != truth)[0][:room]:
                image = np.clip(np.round(images[i]), 0, 255).astype(np.uint8)
                self.misclassified.append((image, int(truth[i]), int(pred[i]),
                                           float(scores[i, pred[i]])))
        self.targets.append(truth)
        self.predicted.append(pred)
        self.count += len(truth)

    def finish(self) -> None:
        self.targets = np.concatenate(self.targets)
        self.predicted = np.concatenate(self.predicted)

    def summary(self) -> str:
        return f"top-1 {100 * np.mean(self.predicted == self.targets):.2f}%"

    def row(self) -> dict:
        counts = analysis.confusion(self.targets, self.predicted, len(self.labels))
        row = {"top1": float(np.mean(self.predicted == self.targets)),
               "agreement": 1.0 if self.reference is None else
               float(np.mean(self.predicted == self.reference.predicted)),
               "per_class": analysis.per_class(counts, self.labels),
               "most_confused": analysis.most_confused(counts, self.labels),
               "confusion": analysis.sparse(counts)}
        if self.reference is not None:
            row["disagreements"] = analysis.disagreements(
                self.reference.predicted, self.predicted, self.targets, self.labels)
        return row
