"""The export report: report.json (every figure), report.md (the same as a page,
with the pictures), and the summary table on stdout."""

from __future__ import annotations

import json
import os

from mnv3.files import write_atomically


def format_table(report: dict) -> str:
    """The summary: one row per model, with the task's headline figures
    (report["headline"]: [key, title, unit]; "%" figures are shares)."""
    headline, agreement = report["headline"], report["agreement"]
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
    made = [f"{r['mode']}: activation ranges {r['int8_ranges']}" for r in report["rows"]
            if r.get("int8_ranges")]
    return "\n".join(lines + ([""] + made if made else []))


def percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def per_class_by_mode(rows: list[dict], count: str, figure: str, value) -> list[str]:
    """A markdown table with a line per class: its `count` (a key of the Keras
    row's per-class entries, e.g. pixels or boxes), then `figure` for each
    mode, as `value(per-class entry)` writes it."""
    modes = [r["mode"] for r in rows]
    lines = [f"| class | {count} | " + " | ".join(f"{m} {figure}" for m in modes) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in modes) + " |"]
    for i, keras in enumerate(rows[0]["per_class"]):
        lines.append(f"| {keras['label']} | {keras[count]} | "
                     + " | ".join(value(r["per_class"][i]) for r in rows) + " |")
    return lines


def format_markdown(report: dict, sections: list[str]) -> str:
    """report.md: the summary table, the training curves, then the task's own
    `sections` (lines)."""
    pictures = report.get("pictures", {})
    lines = [f"# Export report: {report['model']}", "", format_table(report), ""]
    if "curves" in pictures:
        lines += ["## Training", "", f"![training curves]({pictures['curves']})", ""]
    return "\n".join(lines + sections) + "\n"


def write_report(report: dict, out_dir: str, sections: list[str]) -> None:
    write_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1))
    write_atomically(os.path.join(out_dir, "report.md"), format_markdown(report, sections))
