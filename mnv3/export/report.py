"""The export report: report.json (every figure), report.md (the same as a page,
with the pictures), and the summary table on stdout."""

from __future__ import annotations

import json
import os

from mnv3.files import write_atomically

# report.md lists every class up to this many; beyond, the weakest ones
# (report.json has them all).
CLASSES_LISTED = 50


def format_table(report: dict) -> str:
    """The summary: one row per model, with the task's headline figures
    (report["headline"]: [key, title, unit]; "%" figures are shares)."""
    headline = report.get("headline", [["top1", "top-1", "%"]])
    agreement = report.get("agreement", "agrees with Keras")
    lines = [f"{report['model']}: {report['eval_images']} eval images, latency with "
             f"{report['threads']} thread(s), batch 1", "",
             "| mode | file | size (MB) | " + " | ".join(t for _, t, _ in headline)
             + f" | {agreement} | latency (ms) |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in headline)
             + " | ---: | ---: |"]
    for r in report["rows"]:
        latency = "" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        figures = " | ".join(f"{100 * r[key]:.2f}{unit}" for key, _, unit in headline)
        lines.append(f"| {r['mode']} | {r['file']} | {r['size_mb']:.2f} | {figures} | "
                     f"{100 * r['agreement']:.2f}% | {latency} |")
    return "\n".join(lines)


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _per_class_table(rows: list[dict]) -> list[str]:
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
        recalls = " | ".join(_percent(r["per_class"][i]["recall"]) for r in rows)
        lines.append(f"| {keras[i]['label']} | {keras[i]['support']} | {recalls} | "
                     f"{_percent(keras[i]['precision'])} |")
    return lines


def format_markdown(report: dict, sections: list[str]) -> str:
    """report.md: the summary table, the training curves, then the task's own
    `sections` (lines)."""
    pictures = report.get("pictures", {})
    lines = [f"# Export report: {report['model']}", "", format_table(report), ""]
    if "curves" in pictures:
        lines += ["## Training", "", f"![training curves]({pictures['curves']})", ""]
    return "\n".join(lines + sections) + "\n"


def classification_sections(report: dict) -> list[str]:
    """Confusion, misclassified images, disagreements and per-class figures."""
    rows = report["rows"]
    pictures = report.get("pictures", {})
    lines = ["## Confusion (Keras model)", "",
              f"![confusion matrix]({pictures['confusion']})", "",
              "Most-confused pairs:", "",
              "| true class | taken for | images | share of the class |",
              "| --- | --- | ---: | ---: |"]
    lines += [f"| {p['true']} | {p['predicted']} | {p['count']} | "
              f"{_percent(p['share_of_true'])} |" for p in rows[0]["most_confused"]]
    if not rows[0]["most_confused"]:
        lines.append("| (none) | | | |")
    lines += ["", "## Misclassified eval images (Keras model)", "",
              f"![misclassified images]({pictures['misclassified']})", ""]
    lines += ["## Where the exported models disagree with Keras", ""]
    for r in rows[1:]:
        d = r["disagreements"]
        classes = ", ".join(f"{c['label']} ({c['count']})" for c in d["by_true_class"])
        lines.append(f"- **{r['mode']}**: {d['count']} of {report['eval_images']} images "
                     f"({_percent(d['rate'])})" + (f"; by true class: {classes}" if classes
                                                  else ""))
    return lines + [""] + _per_class_table(rows)


def segmentation_sections(report: dict) -> list[str]:
    """Frames with truth and prediction, and each class's IoU per model."""
    rows = report["rows"]
    pictures = report.get("pictures", {})
    modes = [r["mode"] for r in rows]
    lines = ["## Eval frames (Keras model)", "",
             f"![image, truth and prediction]({pictures['frames']})", "",
             "## IoU per class", "",
             "IoU: the pixels both called the class, over the pixels either one does "
             "(truth or prediction); mIoU is their mean. Ignored pixels count in neither.",
             "", "| class | pixels | " + " | ".join(f"{m} IoU" for m in modes) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in modes) + " |"]
    for i, keras in enumerate(rows[0]["per_class"]):
        ious = " | ".join(_percent(r["per_class"][i]["iou"]) for r in rows)
        lines.append(f"| {keras['label']} | {keras['pixels']} | {ious} |")
    return lines


def write_report(report: dict, out_dir: str, sections: list[str]) -> None:
    write_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1))
    write_atomically(os.path.join(out_dir, "report.md"), format_markdown(report, sections))
