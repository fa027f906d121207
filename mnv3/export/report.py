"""The export report: report.json, report.md and the same table on stdout."""

from __future__ import annotations

import json
import os

from mnv3.files import write_atomically


def format_table(report: dict) -> str:
    lines = [f"{report['model']}: {report['eval_images']} eval images, latency with "
             f"{report['threads']} thread(s), batch 1", "",
             "| mode | file | size (MB) | top-1 | agrees with Keras | latency (ms) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        latency = "" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"
        lines.append(f"| {r['mode']} | {r['file']} | {r['size_mb']:.2f} | "
                     f"{100 * r['top1']:.2f}% | {100 * r['agreement']:.2f}% | {latency} |")
    return "\n".join(lines)


def write_report(report: dict, out_dir: str) -> None:
    write_atomically(os.path.join(out_dir, "report.json"), json.dumps(report, indent=2))
    write_atomically(os.path.join(out_dir, "report.md"), format_table(report) + "\n")
